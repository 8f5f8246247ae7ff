"""Adversarial tests of rsa.sandbox: one real hostile program per property, no mocks.

Each test runs a real program in a real sandbox and checks three things: the run ends within its limit plus a
small margin, the program scores 0 (or the documented outcome), and the host is unaffected (no file written,
parent and a sibling process alive, no process left behind). Hostile programs print a "win" marker only when
their attack worked and the expected output IS that marker, so a successful attack would make the test pass
the program. Tests that need namespace isolation skip (with the apt command) where bubblewrap cannot run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from rsa.sandbox import Limits, Sandbox, SandboxError, TestSuite, clean_leftovers, result_matches, stdout_matches
from rsa.sandbox.harness import MEMORY_EXIT, NO_RESULT_EXIT, verdict
from rsa.sandbox.isolation import UID_BASE, UID_COUNT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AS_ROOT = os.geteuid() == 0
NEEDS_ROOT = "needs root: only root can run programs as a dedicated uid, the property checked here"

TIMEOUT_S = 1.0
# Timing checks wait on no clock of their own. The harness measures each test from its fork to its end (start-up
# excluded) and kills it at the limit: that measure must stay near TIMEOUT_S however loaded the machine is
# (KILL_SLACK_S covers a late wake-up under load). The whole run's wall time also counts the sandbox's start-up
# (two bwrap layers and an interpreter), which a loaded machine stretches to many seconds: it gets only the
# generous bound of the runner's own overall deadline, which a run reaches only when a test was not stopped.
KILL_SLACK_S = 2.0
LIMITS = Limits(
    timeout_s=TIMEOUT_S, memory_mb=256, max_processes=16, max_output_bytes=64 << 10, tmpfs_mb=16, startup_s=20
)
WIN = TestSuite(("go\n",), ("WIN\n",))


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(LIMITS, max_workers=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def roomy():
    """Same limits but 5 s per test: for programs that must pass even on a heavily loaded machine."""
    with Sandbox(dataclasses.replace(LIMITS, timeout_s=5.0), max_workers=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def isolated(sandbox):
    """The sandbox, but only when it runs with bubblewrap isolation."""
    if sandbox.mode != "bwrap":
        pytest.skip("needs bubblewrap isolation (apt-get update && apt-get install -y bubblewrap)")
    return sandbox


@pytest.fixture(scope="module")
def fallback():
    with Sandbox(LIMITS, mode="rlimits", max_workers=1) as sb:
        yield sb


def run_timed(sb: Sandbox, program: str, tests: TestSuite = WIN, **kwargs):
    start = time.monotonic()
    result = sb.run(program, tests, **kwargs)
    return result, time.monotonic() - start


def assert_stopped_in_time(sb: Sandbox, result, elapsed: float) -> None:
    """Each test ended within its time limit (harness clock), and the run within the runner's overall deadline."""
    for outcome in result.outcomes:
        assert outcome.time_s < sb.limits.timeout_s + KILL_SLACK_S, (outcome.index, outcome.status, outcome.time_s)
    assert elapsed < sb.limits.overall_deadline_s(max(1, result.total)), elapsed


def live_processes(uid: int) -> list[int]:
    """Non-zombie processes whose real uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(name))
    return found


def assert_dedicated_uid(result) -> None:
    """As root, every run must have used one of the sandbox's own unused uids, never root's or the caller's."""
    assert result.uid is not None and UID_BASE <= result.uid < UID_BASE + UID_COUNT, result.detail
    assert result.detail == f"uid {result.uid} (dedicated)"


def tagged_processes(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def assert_nothing_left(result) -> None:
    """No process of the run survives it. Checked last in a test: in bwrap mode it needs root."""
    time.sleep(0.05)
    if result.mode == "rlimits":
        # the fallback's harness (and every test process forked from it) runs from a folder named after this process
        assert tagged_processes(f"rsa-sandbox-{os.getpid()}.") == [], "fallback sandbox processes survived"
        if result.uid in (0, os.getuid()):
            return  # ran under the caller's uid (see the fallback's documented limits): nothing more to check
    elif not AS_ROOT:
        # as a normal user the program runs under the caller's own uid: its processes are indistinguishable
        pytest.skip(NEEDS_ROOT)
    assert_dedicated_uid(result)
    assert live_processes(result.uid) == [], f"processes of sandbox uid {result.uid} survived"


# ----- output comparison (LiveCodeBench rules) --------------------------------------------------------------------
def test_stdout_comparison_rules():
    assert stdout_matches("1 2\n3\n", "1 2\n3")
    assert stdout_matches("  1 2  \r\n3   \n\n", "1 2\n3\n")
    assert stdout_matches("1.0 2.50\n", "1 2.5\n")  # numbers compare by value
    assert not stdout_matches("1.0001\n", "1\n")
    assert not stdout_matches("1 2 3\n", "1 2\n")
    assert not stdout_matches("1\n2\n", "1\n")
    assert not stdout_matches("yes\n", "Yes\n")
    assert result_matches("[1, 2]", "[1,2]")
    assert result_matches("true", "true") and not result_matches("false", "true")
    assert not result_matches("not json", "1")


# ----- the harness module ------------------------------------------------------------------------------------------
def test_harness_verdicts():
    def judge(**overrides):
        facts = dict(timed_out=False, code=0, sig=None, set_up=True, out_len=3, res_len=None, limit=100, err=b"")
        return verdict(**{**facts, "functional": False, **overrides})

    assert judge() == "ok"
    assert judge(functional=True) == "no_result" and judge(functional=True, res_len=4) == "ok"
    assert judge(set_up=False) is None  # an infrastructure failure, not a verdict on the program
    assert judge(set_up=False, timed_out=True) == "timeout"
    assert judge(sig=signal.SIGXCPU) == "timeout"
    assert judge(out_len=100) == judge(res_len=100) == judge(sig=signal.SIGXFSZ) == "output_limit"
    assert judge(code=1, err=b"OSError: [Errno 27] File too large") == "output_limit"
    assert judge(sig=signal.SIGKILL) == "killed" and judge(sig=signal.SIGSEGV) == "runtime_error"
    assert judge(code=MEMORY_EXIT) == "memory_limit" and judge(code=NO_RESULT_EXIT) == "no_result"
    assert judge(code=2) == "runtime_error"


def test_harness_is_standalone_and_is_what_the_sandbox_runs():
    import ast

    import rsa.sandbox.harness as harness
    from rsa.sandbox.runner import harness_source

    with open(harness.__file__, encoding="utf-8") as f:
        text = f.read()
    assert harness_source() == text
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    # it runs as `python -I -S harness.py`: the standard library only, nothing from rsa or site-packages
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# ----- resource limits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_infinite_loop_times_out(which, request):
    sb = request.getfixturevalue(which)
    result, elapsed = run_timed(sb, "while True:\n    pass\n")
    assert result.statuses() == ["timeout"] and result.passed == 0
    assert_stopped_in_time(sb, result, elapsed)
    assert_nothing_left(result)


def test_fork_bomb_is_contained(isolated):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    before = len(os.listdir("/proc"))
    result, elapsed = run_timed(isolated, program)
    assert result.passed == 0 and result.statuses()[0] in {"timeout", "killed", "runtime_error"}
    assert_stopped_in_time(isolated, result, elapsed)
    assert_nothing_left(result)
    assert len(os.listdir("/proc")) < before + 10  # no host-wide process growth survives the run


@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_memory_bomb_hits_the_limit(which, request):
    sb = request.getfixturevalue(which)
    # bytes(n) is calloc-backed, so the bomb reaches the address-space limit fast even on a loaded machine
    program = "chunks = []\nwhile True:\n    chunks.append(bytes(10 ** 8))\n"
    result, elapsed = run_timed(sb, program)
    assert result.statuses() == ["memory_limit"] and result.passed == 0
    assert_stopped_in_time(sb, result, elapsed)


@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_huge_output_is_cut(which, request):
    sb = request.getfixturevalue(which)
    result, elapsed = run_timed(sb, "while True:\n    print('x' * 1000)\n")
    assert result.statuses() == ["output_limit"] and result.passed == 0
    assert_stopped_in_time(sb, result, elapsed)
    # a program that swallows the write errors and keeps going is stopped by the clock instead
    program = "import os\nwhile True:\n    try:\n        os.write(1, b'x' * 65536)\n    except OSError:\n        pass\n"
    result, elapsed = run_timed(sb, program)
    assert result.statuses()[0] in {"timeout", "output_limit"} and result.passed == 0
    assert_stopped_in_time(sb, result, elapsed)


def test_private_tmp_is_size_limited(isolated):
    program = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 60000)\n    i += 1\n"
    result, elapsed = run_timed(isolated, program)
    assert result.statuses() == ["runtime_error"] and "No space left" in result.outcomes[0].stderr_tail
    assert_stopped_in_time(isolated, result, elapsed)


# Writes files of 60000 bytes (under the 64 KiB file-size limit) into a directory until the file system refuses
# more; prints how many bytes it got in and the error. "WIN" only when 300 MiB fit.
FILL_DIRECTORY = (
    "import sys\n"
    "target, written, error = sys.argv_target, 0, 'none'\n"
    "try:\n"
    "    for i in range(300 * 2 ** 20 // 60000 + 1):\n"
    "        with open(f'{target}/f{i}', 'wb') as f:\n"
    "            f.write(b'x' * 60000)\n"
    "        written += 60000\n"
    "except OSError as exc:\n"
    "    error = exc.strerror\n"
    "print('WIN' if written >= 300 * 2 ** 20 else f'{written} {error}')\n"
)


def fill(directory: str) -> str:
    return FILL_DIRECTORY.replace("sys.argv_target", repr(directory))


def test_dev_shm_is_size_limited(isolated):
    # bwrap's own /dev is a tmpfs of half the host RAM; the sandbox gives /dev/shm its own `shm_mb` cap instead
    result, elapsed = run_timed(isolated, fill("/dev/shm"))
    assert result.statuses() == ["ok"] and result.passed == 0
    written, error = result.outcomes[0].output_head.split(" ", 1)
    assert error.strip() == "No space left on device"
    assert 0 < int(written) <= isolated.limits.shm_mb << 20
    assert_stopped_in_time(isolated, result, elapsed)
    # and the rest of /dev (a tmpfs too) is read-only
    result, _ = run_timed(isolated, fill("/dev"))
    assert result.outcomes[0].output_head == "0 Read-only file system\n"


def test_dev_shm_can_be_switched_off(isolated):
    with Sandbox(dataclasses.replace(LIMITS, shm_mb=0), max_workers=1) as sb:
        result, _ = run_timed(sb, fill("/dev/shm"))
    assert result.mode == "bwrap" and result.outcomes[0].output_head == "0 Read-only file system\n"
    with pytest.raises(ValueError, match="Limits.shm_mb"):
        Limits(shm_mb=-1)


def test_deep_recursion_crashes_only_its_test(roomy):
    # C-level recursion (repr of a self-referencing object) with the recursion limit lifted overflows the C stack.
    program = (
        "import sys\n"
        "class Node:\n"
        "    def __repr__(self):\n"
        "        return repr(self)\n"
        "if input().strip() == 'deep':\n"
        "    sys.setrecursionlimit(10 ** 8)\n"
        "    print(repr(Node()))\n"
        "else:\n"
        "    print(7)\n"
    )
    if roomy.mode != "bwrap":
        pytest.skip("needs bubblewrap isolation (apt-get update && apt-get install -y bubblewrap)")
    result, elapsed = run_timed(roomy, program, TestSuite(("deep\n", "shallow\n"), ("x\n", "7\n")))
    # documented outcome: the deep test fails (C stack overflow -> SIGSEGV, or a memory/time limit) and the
    # harness goes on to the next test, which passes.
    assert result.statuses()[0] in {"runtime_error", "memory_limit", "timeout"}
    assert [o.passed for o in result.outcomes] == [False, True]
    assert_stopped_in_time(roomy, result, elapsed)


# ----- isolation from the host -------------------------------------------------------------------------------------
def test_cannot_write_outside_the_working_directory(isolated, tmp_path):
    os.chmod(tmp_path, 0o777)  # even a world-writable host directory must stay untouched
    outside = [str(tmp_path / "pwned.txt"), os.path.join(os.getcwd(), f"pwned-{secrets.token_hex(4)}.txt")]
    outside.append(os.path.join(os.path.dirname(sys.executable), "pwned"))
    private_tmp = f"/tmp/pwned-{secrets.token_hex(4)}.txt"  # allowed: the sandbox's own /tmp
    program = (
        "import os\n"
        "wrote = []\n"
        f"for path in {outside!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('pwned')\n"
        "        wrote.append(path)\n"
        "    except OSError:\n"
        "        pass\n"
        f"open({private_tmp!r}, 'w').write('private')\n"
        "open('scratch.txt', 'w').write('fine')  # the working directory itself is writable\n"
        "print('WIN' if wrote else 'no')\n"
    )
    result, elapsed = run_timed(isolated, program)
    assert result.statuses() == ["ok"] and result.passed == 0
    assert result.outcomes[0].output_head == "no\n"
    assert_stopped_in_time(isolated, result, elapsed)
    for target in [*outside, private_tmp]:
        assert not os.path.exists(target), f"sandboxed program wrote {target} on the host"


def test_working_directory_starts_empty_every_run(roomy):
    program = "import os\nprint(len(os.listdir('.')))\nopen('left-behind.txt', 'w').write('x')\n"
    tests = TestSuite(("\n",), ("0\n",))
    first = roomy.run(program, tests)
    second = roomy.run(program, tests)
    assert first.passed == 1 and second.passed == 1


def test_parent_secrets_are_not_visible(isolated, monkeypatch):
    secret = f"SECRET-{secrets.token_hex(8)}"
    monkeypatch.setenv("RSA_TEST_SECRET", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    program = (
        "import os\n"
        f"parent = {os.getpid()}\n"
        "found = [v for v in os.environ.values() if v.startswith('SECRET-')]\n"
        "for path in [f'/proc/{parent}/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ']:\n"
        "    try:\n"
        "        data = open(path, 'rb').read().decode('utf-8', 'replace')\n"
        "    except OSError:\n"
        "        continue\n"
        "    found += [part.split('=', 1)[1] for part in data.split('\\0') if '=SECRET-' in part]\n"
        "print(found[0] if found else 'none')\n"
    )
    result, elapsed = run_timed(isolated, program, TestSuite(("\n",), (secret + "\n",)))
    assert result.statuses() == ["ok"] and result.passed == 0
    assert secret not in result.outcomes[0].output_head
    assert_stopped_in_time(isolated, result, elapsed)


def test_no_network(isolated):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert_cannot_connect(isolated, server, f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n")


def assert_cannot_connect(sb: Sandbox, server: socket.socket, connect: str) -> None:
    """A program whose `connect` lines connect `s` to the listening `server` and send data must fail to, and the
    server must see no connection."""
    program = (
        "import socket\n"
        "try:\n"
        f"{connect}"
        "    s.sendall(b'exfiltrated')\n"
        "    print('WIN')\n"
        "except OSError as exc:\n"
        "    print('blocked', exc)\n"
    )
    try:
        result, elapsed = run_timed(sb, program)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.statuses() == ["ok"] and result.passed == 0
    assert result.outcomes[0].output_head.startswith("blocked")
    assert_stopped_in_time(sb, result, elapsed)


@pytest.fixture
def world_writable_host_dir():
    """A fresh world-writable directory in the host's /var/tmp (a place a stranger uid can reach on most hosts)."""
    path = tempfile.mkdtemp(prefix="rsa-sandbox-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_host_unix_sockets_are_unreachable(isolated, world_writable_host_dir):
    # a listening socket that any uid may connect to, as a loose system-bus or container-runtime socket would be
    path = os.path.join(world_writable_host_dir, "host.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(1)
    connect = f"    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n    s.connect({path!r})\n"
    assert_cannot_connect(isolated, server, connect)


def test_only_system_paths_and_the_interpreter_are_visible(isolated, world_writable_host_dir):
    # a world-readable file in a world-readable host directory (where users keep test data) stays out of sight
    secret = f"SECRET-{secrets.token_hex(8)}"
    data = os.path.join(world_writable_host_dir, "tests.jsonl")
    with open(data, "w") as f:
        f.write(secret + "\n")
    os.chmod(data, 0o644)
    program = (
        "import json, os\n"
        "found = []\n"
        f"for path in [{data!r}, '/var/tmp', '/home', '/run', '/etc/hostname']:\n"
        "    try:\n"
        "        found.append(open(path).read() if os.path.isfile(path) else os.listdir(path))\n"
        "    except OSError:\n"
        "        pass\n"
        "print(json.dumps({'root': os.listdir('/'), 'found': found}))\n"
    )
    result, _ = run_timed(isolated, program)
    assert result.statuses() == ["ok"]
    seen = json.loads(result.outcomes[0].output_head)
    assert seen["found"] == []
    system = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp"}
    interpreter = {p.strip("/").split("/")[0] for p in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable))}
    assert set(seen["root"]) <= system | interpreter


def test_cannot_signal_or_kill_the_parent(isolated):
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        program = (
            "import os, signal, sys\n"
            "sent = []\n"
            f"for pid in ({os.getpid()}, {sibling.pid}, {os.getppid()}):\n"
            "    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n"
            "        try:\n"
            "            os.kill(pid, sig)\n"
            "            sent.append(pid)\n"
            "        except OSError:\n"
            "            pass\n"
            f"for pgid in ({os.getpgid(0)}, {os.getpgid(sibling.pid)}):\n"
            "    try:\n"
            "        os.killpg(pgid, signal.SIGKILL)\n"
            "        sent.append(pgid)\n"
            "    except OSError:\n"
            "        pass\n"
            "print('WIN' if sent else 'none')\n"
            "sys.stdout.flush()\n"
            "for pid in (os.getppid(), 1, -1):  # then everything it CAN reach: its own sandbox\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        result, elapsed = run_timed(isolated, program)
        assert sibling.poll() is None, "a host process was killed from inside the sandbox"
    finally:
        sibling.kill()
        sibling.wait()
    # The program may kill its own harness (the sandbox's pid 1 ignores it), but that only loses its tests.
    assert result.passed == 0
    assert_stopped_in_time(isolated, result, elapsed)
    assert_nothing_left(result)


# ----- tampering with the grading ----------------------------------------------------------------------------------
CALL = TestSuite(("3\n4",), ("7",), fn_name="add")


def test_closing_stdout_scores_zero(sandbox):
    program = "import os, sys\nsys.stdout.close()\nos.closerange(0, 1024)\n"
    result, elapsed = run_timed(sandbox, program, TestSuite(("\n", "\n"), ("WIN\n", "WIN\n")))
    assert result.passed == 0 and len(result.outcomes) == 2  # every test still reported
    assert_stopped_in_time(sandbox, result, elapsed)
    program = "import os\nos.closerange(0, 1024)\ndef add(a, b):\n    return a - b\n"
    result, _ = run_timed(sandbox, program, CALL)
    assert result.passed == 0


@pytest.mark.parametrize(
    "program",
    [
        "import sys\nsys.exit(0)\ndef add(a, b):\n    return a + b\n",
        "import os\nos._exit(0)\ndef add(a, b):\n    return a + b\n",
        "raise SystemExit\nclass Solution:\n    def add(self, a, b):\n        return a + b\n",
    ],
    ids=["sys.exit", "os._exit", "SystemExit-before-class"],
)
def test_exit_before_the_tests_run_scores_zero(sandbox, program):
    result, elapsed = run_timed(sandbox, program, CALL)
    assert result.statuses() == ["no_result"] and result.passed == 0
    assert_stopped_in_time(sandbox, result, elapsed)


def test_exit_zero_without_output_scores_zero(sandbox):
    result, _ = run_timed(sandbox, "import sys\nsys.exit(0)\n")
    assert result.statuses() == ["ok"] and result.passed == 0


TAMPERING = {
    # an object equal to everything: the comparison happens on its JSON form outside the sandbox
    "rigged-eq": "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()\n",
    "rigged-list": "class L(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return L([0])\n",
    # monkeypatch the harness and the json module it uses (in the test's own process), and send well-formed
    # frames that claim the expected result '"WIN"' for both tests on every descriptor it can reach (the
    # harness's report pipe included, if it could)
    "monkeypatch": (
        "import json, os, sys\n"
        "main = sys.modules['__main__']\n"
        "for name in ('frame', 'write_all', 'read_capped', 'wait_for', 'child', 'finish'):\n"
        "    setattr(main, name, lambda *a, **k: None)\n"
        "json.dumps = lambda *a, **k: 'true'  # this process's own answer: its choice, not a forgery\n"
        'record = b\'\'.join(b\'{"i": %d, "status": "ok", "exit": 0, "signal": null, "time_s": 0.01, \'\n'
        '                  b\'"out": 5, "err": 0}\\n"WIN"\' % i for i in range(2))\n'
        "for fd in range(0, 64):\n"
        "    try:\n"
        "        os.write(fd, record)\n"
        "    except OSError:\n"
        "        pass\n"
        "for pid in (os.getppid(), 1):\n"
        "    for fd in range(0, 8):\n"
        "        try:\n"
        "            with open(f'/proc/{pid}/fd/{fd}', 'wb') as f:\n"
        "                f.write(record)\n"
        "        except OSError:\n"
        "            pass\n"
        "def add(a, b):\n"
        "    return -1\n"
    ),
    # rewrite the harness's files: the solution that later tests run becomes one that answers '"WIN"', and a
    # '"WIN"' result file is written for every test next to this test's output file (found through fd 1)
    "rewrite-files": (
        "import os, sys\n"
        "spec_dir = os.path.dirname(os.path.abspath(sys.modules['__main__'].__file__))\n"
        "forged = {'solution.py': 'def add(a, b):\\n    return \"WIN\"\\n'}\n"
        "for name in os.listdir(spec_dir):\n"
        "    try:\n"
        "        open(os.path.join(spec_dir, name), 'w').write(forged.get(name, ''))\n"
        "    except OSError:\n"
        "        pass\n"
        "io_dir = os.path.dirname(os.readlink('/proc/self/fd/1'))\n"
        "for i in range(4):\n"
        "    try:\n"
        "        open(os.path.join(io_dir, f'res{i}'), 'w').write('\"WIN\"')\n"
        "    except OSError:\n"
        "        pass\n"
        "def add(a, b):\n"
        "    return -1\n"
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_with_the_harness_scores_zero(sandbox, name):
    """The expected result of both tests is '"WIN"', which the program forges (frames, result files, the
    solution later tests run) while its `add` returns -1: a grader that accepted any forgery would score > 0."""
    if name in ("monkeypatch", "rewrite-files") and sandbox.mode != "bwrap":
        # the rlimits fallback does not stop forgery (as root a program writes into the harness's report pipe
        # through /proc: docs/SANDBOX.md, Limits)
        pytest.skip("needs bubblewrap isolation (apt-get update && apt-get install -y bubblewrap)")
    tests = TestSuite(("3\n4", "5\n6"), ('"WIN"', '"WIN"'), fn_name="add")
    result, elapsed = run_timed(sandbox, TAMPERING[name], tests)
    assert result.passed == 0, result
    # each test was graded on what its own process answered (`add`'s -1, or the patched json's "true")
    answer = {"monkeypatch": "true", "rewrite-files": "-1"}.get(name)
    if answer:
        assert [(o.status, o.output_head) for o in result.outcomes] == [("ok", answer)] * 2, result
    # generous: two tests at TIMEOUT_S each plus start-up, on a loaded machine (a stuck run takes far longer)
    assert_stopped_in_time(sandbox, result, elapsed)


def test_expected_outputs_never_enter_the_sandbox(isolated):
    secret = f"SECRET-{secrets.token_hex(8)}"
    # search the sandbox's whole writable/readable scratch space and the harness's process for the secret
    program = (
        "import os, re\n"
        "paths = [os.path.join(d, f) for d, _, files in os.walk('/tmp') for f in files]\n"
        "paths += [f'/proc/1/{name}' for name in ('cmdline', 'environ')]\n"
        "paths += [f'/proc/1/fd/{fd}' for fd in range(8)]\n"
        "found = []\n"
        "for path in paths:\n"
        "    try:\n"
        "        data = open(path, 'rb').read(1 << 20).decode('latin-1')\n"
        "    except OSError:\n"
        "        continue\n"
        "    found += re.findall('SECRET-[0-9a-f]{16}', data)\n"
        "print(found[0] if found else 'none')\n"
    )
    result, _ = run_timed(isolated, program, TestSuite(("\n",), (secret + "\n",)))
    assert result.passed == 0 and secret not in result.outcomes[0].output_head


# ----- modes, parallelism, failure reporting -----------------------------------------------------------------------
def test_correct_incorrect_and_partial_programs(roomy):
    tests = TestSuite(("1 2\n", "3 4\n", "10 -3\n"), ("3\n", "7\n", "7\n"))
    correct = "a, b = map(int, input().split())\nprint(a + b)\n"
    partial = "a, b = map(int, input().split())\nprint(abs(a) + abs(b) if a < 10 else 0)\n"
    wrong = "print(0)\n"
    results = roomy.run_many([(correct, tests), (partial, tests), (wrong, tests)])
    assert [r.passed for r in results] == [3, 2, 0]
    assert results[0].all_passed and not results[1].all_passed
    assert all(r.mode == roomy.mode for r in results)
    fast = roomy.run(wrong, tests, fail_fast=True)
    assert fast.passed == 0 and len(fast.outcomes) == 1 and "first failed" in fast.error


def test_stopping_early_kills_the_whole_sandbox(isolated):
    # test 0 fails at once; test 1 would spin (with children) for its whole time limit: fail-fast kills it all
    program = (
        "import os\n"
        "if input().strip() == 'fail':\n"
        "    print('wrong')\n"
        "else:\n"
        "    for _ in range(4):\n"
        "        if os.fork() == 0:\n"
        "            break\n"
        "    while True:\n"
        "        pass\n"
    )
    tests = TestSuite(("fail\n", "spin\n", "spin\n"), ("right\n", "x\n", "x\n"))
    result, elapsed = run_timed(isolated, program, tests, fail_fast=True)
    assert result.passed == 0 and len(result.outcomes) == 1
    assert_stopped_in_time(isolated, result, elapsed)
    assert_nothing_left(result)


def test_mode_is_reported_and_fallback_is_loud(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")  # a host without bubblewrap
    with pytest.raises(SandboxError, match="bubblewrap sandbox unavailable"):
        Sandbox(LIMITS, mode="bwrap").mode  # noqa: B018
    with (
        caplog.at_level(logging.WARNING, logger="rsa.sandbox"),
        Sandbox(dataclasses.replace(LIMITS, timeout_s=5)) as sb,
    ):
        result = sb.run("print(input())\n", TestSuite(("hi\n",), ("hi\n",)))
    assert result.mode == "rlimits" and result.passed == 1
    assert "SANDBOX FALLBACK" in caplog.text


def test_parallel_workers_are_bounded_and_ordered(roomy):
    tests = TestSuite(("5\n",), ("25\n",))
    jobs = [(f"n = int(input())\nprint(n * n + {k})\n", tests) for k in range(6)]
    results = roomy.run_many(jobs)
    assert [r.passed for r in results] == [1, 0, 0, 0, 0, 0]
    if not AS_ROOT:
        pytest.skip(NEEDS_ROOT)
    # as root each worker claims its own unused uid once and reuses it: at most max_workers distinct dedicated uids
    for result in results:
        assert_dedicated_uid(result)
    assert 1 <= len({r.uid for r in results}) <= roomy.max_workers
    # two programs running at the same time never share a uid, and each really runs as the uid reported
    program = "import os, time\ntime.sleep(1)\nprint(os.getuid())\n"
    sleepers = roomy.run_many([(program, TestSuite(("\n",), ("x\n",)))] * 2)
    assert sleepers[0].uid != sleepers[1].uid
    assert [r.outcomes[0].output_head.strip() for r in sleepers] == [str(r.uid) for r in sleepers]
    for result in results:
        assert_nothing_left(result)


# A grader process: runs one program that sleeps through its test's time limit.
GRADER = (
    "import sys\n"
    "from rsa.sandbox import Limits, Sandbox, TestSuite\n"
    "sandbox = Sandbox(Limits(timeout_s=8.0, startup_s=20.0), max_workers=1, mode=sys.argv[1])\n"
    "sandbox.run('import time\\ntime.sleep(60)\\n', TestSuite(('\\n',), ('x\\n',)))\n"
)


def start_grader(mode: str) -> tuple[subprocess.Popen, str]:
    """Start a grader in a new process; return it and its sandbox folder once the run has begun."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    grader = subprocess.Popen([sys.executable, "-c", GRADER, mode], env=env, stderr=subprocess.PIPE)
    pattern = os.path.join(tempfile.gettempdir(), f"rsa-sandbox-{grader.pid}.*")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and grader.poll() is None:
        for folder in glob.glob(pattern):  # (the first folder may be the mode probe's)
            with contextlib.suppress(OSError), open(os.path.join(folder, "solution.py")) as f:
                if "sleep(60)" in f.read():
                    return grader, folder
        time.sleep(0.05)
    grader.kill()
    raise AssertionError(f"the grader made no sandbox folder: {grader.communicate()[1].decode()[-2000:]}")


@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_folders_of_killed_graders_are_removed_at_the_next_start(which, request):
    mode = request.getfixturevalue(which).mode
    killed, killed_folder = start_grader(mode)
    live, live_folder = start_grader(mode)
    try:
        killed.kill()  # SIGKILL mid-run: no cleanup code of the grader runs
        killed.wait()
        assert os.path.isdir(killed_folder)  # the leftover: the program and its inputs
        # a folder of the same shape that another user's dead grader left: not ours, so never touched
        strangers = os.path.join(tempfile.gettempdir(), f"rsa-sandbox-{killed.pid}.0-{secrets.token_hex(4)}")
        os.mkdir(strangers)
        if AS_ROOT:
            os.chown(strangers, 4242, 4242)
        with Sandbox(LIMITS, mode=mode, max_workers=1):  # starting a new sandbox cleans up
            pass
        assert not os.path.exists(killed_folder), "a dead grader's folder survived the next start"
        if AS_ROOT:
            assert os.path.isdir(strangers), "another user's folder was removed"
        assert os.path.isfile(os.path.join(live_folder, "solution.py")), "a live grader's folder was removed"
        assert live.poll() is None
    finally:
        for grader in (killed, live):
            grader.send_signal(signal.SIGKILL)
            grader.wait()
        with contextlib.suppress(NameError, OSError):
            os.rmdir(strangers)
    assert live_folder in clean_leftovers()  # now dead too: removed by the next clean-up
    assert not os.path.exists(live_folder)
    assert os.path.isdir(os.path.join(tempfile.gettempdir(), "rsa-sandbox-uids")) or not AS_ROOT


def test_limits_are_validated():
    with pytest.raises(ValueError, match="Limits.timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="Limits.memory_mb"):
        Limits(memory_mb=-1)
