"""Adversarial tests of rsa.sandbox: one real hostile program per property, no mocks.

Each test runs a real program in a real sandbox and checks three things: the run ends within its limit plus a
small margin, the program scores 0 (or the documented outcome), and the host is unaffected (no file written,
parent and a sibling process alive, no process left behind). Hostile programs print a "win" marker only when
their attack worked and the expected output IS that marker, so a successful attack would make the test pass
the program. Tests that need namespace isolation skip (with the apt command) where bubblewrap cannot run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from rsa.sandbox import Limits, Sandbox, SandboxError, TestSuite, result_matches, stdout_matches

TIMEOUT_S = 1.0
MARGIN_S = 3.0  # sandbox start-up (two bwrap layers + interpreter) and slow CI machines
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


def assert_nothing_left(result) -> None:
    if result.uid is not None and result.uid not in (0, os.getuid()):
        time.sleep(0.05)
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


# ----- resource limits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_infinite_loop_times_out(which, request):
    sb = request.getfixturevalue(which)
    result, elapsed = run_timed(sb, "while True:\n    pass\n")
    assert result.statuses() == ["timeout"] and result.passed == 0
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert_nothing_left(result)


def test_fork_bomb_is_contained(isolated):
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    before = len(os.listdir("/proc"))
    result, elapsed = run_timed(isolated, program)
    assert result.passed == 0 and result.statuses()[0] in {"timeout", "killed", "runtime_error"}
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert_nothing_left(result)
    assert len(os.listdir("/proc")) < before + 10  # no host-wide process growth survives the run


@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_memory_bomb_hits_the_limit(which, request):
    sb = request.getfixturevalue(which)
    # bytes(n) is calloc-backed, so the bomb reaches the address-space limit fast even on a loaded machine
    program = "chunks = []\nwhile True:\n    chunks.append(bytes(10 ** 8))\n"
    result, elapsed = run_timed(sb, program)
    assert result.statuses() == ["memory_limit"] and result.passed == 0
    assert elapsed < TIMEOUT_S + MARGIN_S


@pytest.mark.parametrize("which", ["sandbox", "fallback"])
def test_huge_output_is_cut(which, request):
    sb = request.getfixturevalue(which)
    result, elapsed = run_timed(sb, "while True:\n    print('x' * 1000)\n")
    assert result.statuses() == ["output_limit"] and result.passed == 0
    assert elapsed < TIMEOUT_S + MARGIN_S
    # a program that swallows the write errors and keeps going is stopped by the clock instead
    program = "import os\nwhile True:\n    try:\n        os.write(1, b'x' * 65536)\n    except OSError:\n        pass\n"
    result, elapsed = run_timed(sb, program)
    assert result.statuses()[0] in {"timeout", "output_limit"} and result.passed == 0
    assert elapsed < TIMEOUT_S + MARGIN_S


def test_private_tmp_is_size_limited(isolated):
    program = "i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 60000)\n    i += 1\n"
    result, elapsed = run_timed(isolated, program)
    assert result.statuses() == ["runtime_error"] and "No space left" in result.outcomes[0].stderr_tail
    assert elapsed < TIMEOUT_S + MARGIN_S


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
    assert elapsed < 2 * roomy.limits.timeout_s + MARGIN_S


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
    assert elapsed < TIMEOUT_S + MARGIN_S
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
    assert elapsed < TIMEOUT_S + MARGIN_S


def test_no_network(isolated):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    program = (
        "import socket\n"
        "try:\n"
        f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
        "    s.sendall(b'exfiltrated')\n"
        "    print('WIN')\n"
        "except OSError as exc:\n"
        "    print('blocked', exc)\n"
    )
    try:
        result, elapsed = run_timed(isolated, program)
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.statuses() == ["ok"] and result.passed == 0
    assert result.outcomes[0].output_head.startswith("blocked")
    assert elapsed < TIMEOUT_S + MARGIN_S


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
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert_nothing_left(result)


# ----- tampering with the grading ----------------------------------------------------------------------------------
CALL = TestSuite(("3\n4",), ("7",), fn_name="add")


def test_closing_stdout_scores_zero(sandbox):
    program = "import os, sys\nsys.stdout.close()\nos.closerange(0, 1024)\n"
    result, elapsed = run_timed(sandbox, program, TestSuite(("\n", "\n"), ("WIN\n", "WIN\n")))
    assert result.passed == 0 and len(result.outcomes) == 2  # every test still reported
    assert elapsed < TIMEOUT_S + MARGIN_S
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
    assert elapsed < TIMEOUT_S + MARGIN_S


def test_exit_zero_without_output_scores_zero(sandbox):
    result, _ = run_timed(sandbox, "import sys\nsys.exit(0)\n")
    assert result.statuses() == ["ok"] and result.passed == 0


TAMPERING = {
    # an object equal to everything: the comparison happens on its JSON form outside the sandbox
    "rigged-eq": "class Any:\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return Any()\n",
    "rigged-list": "class L(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return L([0])\n",
    # monkeypatch the harness and the json module it uses, forge records on every descriptor it can reach
    "monkeypatch": (
        "import json, os, sys\n"
        "main = sys.modules['__main__']\n"
        "for name in ('frame', 'write_all', 'read_capped', 'wait_for', 'child', 'finish'):\n"
        "    setattr(main, name, lambda *a, **k: None)\n"
        "json.dumps = lambda *a, **k: 'true'\n"
        'record = b\'{"i": 0, "status": "ok", "out": 4, "err": 0}\\n"WIN"\\n\'\n'
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
    # rewrite the harness and spec files, and pre-write the result file for every test
    "rewrite-files": (
        "import os, sys\n"
        "spec_dir = os.path.dirname(sys.modules['__main__'].__file__)\n"
        "for name in os.listdir(spec_dir):\n"
        "    try:\n"
        "        open(os.path.join(spec_dir, name), 'w').write('')\n"
        "    except OSError:\n"
        "        pass\n"
        "io_dir = sys.modules['__main__'].__dict__.get('spec', {}).get('io_dir', '/tmp/.io')\n"
        "for i in range(4):\n"
        "    try:\n"
        "        open(os.path.join(io_dir, f'res{i}'), 'w').write('\"WIN\"')\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_with_the_harness_scores_zero(sandbox, name):
    secret = f"SECRET-{secrets.token_hex(6)}"
    tests = TestSuite(("3\n4", "5\n6"), (f'"{secret}"', f'"{secret}"'), fn_name="add")
    result, elapsed = run_timed(sandbox, TAMPERING[name], tests)
    assert result.passed == 0, result
    assert elapsed < 2 * TIMEOUT_S + MARGIN_S


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
    assert elapsed < TIMEOUT_S + MARGIN_S
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
    assert len({r.uid for r in results}) <= roomy.max_workers


def test_limits_are_validated():
    with pytest.raises(ValueError, match="Limits.timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="Limits.memory_mb"):
        Limits(memory_mb=-1)
