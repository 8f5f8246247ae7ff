"""Host side of the code sandbox: limits, test suites, the bwrap command, the run loop and output comparison.

The package docstring (`rsa/sandbox/__init__.py`) states what the sandbox guarantees and what it does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import logging
import math
import os
import pwd
import queue
import re
import selectors
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache, partial
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

#: first uid/gid of the unprivileged ids used as root (one per concurrent sandbox)
UID_BASE = int(os.environ.get("RSA_SANDBOX_UID_BASE", "61000"))
UID_COUNT = 1024
MODES = ("auto", "bwrap", "rlimits")
OUTPUT_HEAD_CHARS = 500
STATUSES = ("ok", "timeout", "runtime_error", "memory_limit", "output_limit", "no_result", "killed", "lost")

# Paths inside the bwrap sandbox.
_IN_SPEC = "/tmp/.rsa"
_IN_WORK = "/tmp/work"
_IN_IO = "/tmp/.io"
# The only host paths a sandboxed program sees, besides the interpreter's own directories: the system's programs
# and libraries (merged-/usr symlinks are recreated as symlinks) and the /etc files the dynamic loader and the
# time-zone code read. The rest of the host (/home, /root, /run, /var, /tmp, /mnt, /srv, /opt, /sys, /etc, the
# caller's files) is absent, so neither its files nor its UNIX sockets can be reached.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_PATHS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/alternatives")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


# Host paths every sandbox of this process keeps out of sight (the grader's own input and output), see hide_from_programs
_PROCESS_HIDDEN: set[str] = set()
_PROCESS_HIDDEN_LOCK = threading.Lock()


def hide_from_programs(*paths: str | os.PathLike) -> None:
    """Keep these host paths out of every later sandbox of this process (bwrap mode), e.g. a grader's input and
    output files, even where they lie inside a directory the sandbox shows (the interpreter's, /usr)."""
    with _PROCESS_HIDDEN_LOCK:
        _PROCESS_HIDDEN.update(os.path.realpath(p) for p in paths)


class SandboxError(RuntimeError):
    """The sandbox itself failed (could not start, or is misconfigured); not a verdict on the program."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed program; `timeout_s`, `cpu_s`, memory and output apply per test."""

    timeout_s: float = 6.0  # wall-clock limit per test (LiveCodeBench uses 6 s)
    cpu_s: float | None = None  # CPU-time limit per test process; default ceil(timeout_s) + 1
    memory_mb: int = 2048  # address space (RLIMIT_AS) per test process
    max_processes: int = 32  # processes/threads a test may add (RLIMIT_NPROC above the sandbox's own)
    max_output_bytes: int = 16 << 20  # stdout size and any single file (RLIMIT_FSIZE)
    max_open_files: int = 256
    tmpfs_mb: int = 128  # size of the private /tmp (working directory + captured output) in bwrap mode
    shm_mb: int = 16  # size of the private /dev/shm in bwrap mode; 0: /dev/shm is read-only (no shared memory)
    startup_s: float = 30.0  # allowance for the sandbox and the interpreter to start

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "max_processes", "max_output_bytes", "max_open_files", "tmpfs_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number, got {value!r}")
        if not isinstance(self.shm_mb, int) or self.shm_mb < 0:
            raise ValueError(f"Limits.shm_mb must be a non-negative integer, got {self.shm_mb!r}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"Limits.cpu_s must be positive or None, got {self.cpu_s!r}")
        if self.startup_s <= 0:
            raise ValueError(f"Limits.startup_s must be positive, got {self.startup_s!r}")

    @property
    def cpu_limit_s(self) -> int:
        """The RLIMIT_CPU value in whole seconds."""
        return int(math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))

    def overall_deadline_s(self, n_tests: int) -> float:
        """Wall-clock budget of a whole run: start-up plus (timeout + 1 s) per test, LiveCodeBench-like."""
        return self.startup_s + n_tests * (self.timeout_s + 1.0) + 2.0


@dataclass(frozen=True)
class TestSuite:
    """Test cases of one problem: `inputs[i]` must produce `outputs[i]`.

    `fn_name` None: stdin/stdout programs; input and output are the full stdin and expected stdout text.
    `fn_name` set: functional tests; each input is newline-separated JSON arguments of `fn_name` (a method of
    `class Solution` when the program defines it, else a top-level function), each output the JSON result.
    """

    __test__ = False  # not a pytest test class

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fn_name: str | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs):
            raise ValueError(
                f"field 'tests.outputs' has {len(self.outputs)} entries but 'tests.inputs' has {len(self.inputs)}"
            )

    @property
    def mode(self) -> str:
        """Either "call" (functional tests) or "stdin" (stdin/stdout programs)."""
        return "call" if self.fn_name else "stdin"

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def from_dict(cls, tests: Any, where: str = "tests") -> TestSuite:
        """Build from {"inputs": [...], "outputs": [...], "fn_name": name or None}; ValueError names the field.

        For functional tests an input may also be a list of arguments and an output any JSON value; they are
        converted to LiveCodeBench's text form. `tests` may also be that object serialised as a JSON string.
        """
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: field 'tests' is a string but not valid JSON ({exc.msg})") from None
        if not isinstance(tests, Mapping):
            raise ValueError(
                f"{where}: field 'tests' must be an object {{inputs, outputs, fn_name}}, got {type(tests).__name__}"
            )
        fn_name = tests.get("fn_name")
        if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
            raise ValueError(f"{where}: field 'tests.fn_name' must be a Python identifier or null, got {fn_name!r}")
        fn_name = fn_name or None
        columns = {}
        for key in ("inputs", "outputs"):
            values = tests.get(key)
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"{where}: field 'tests.{key}' must be a non-empty list")
            converted = []
            for i, value in enumerate(values):
                if isinstance(value, str):
                    converted.append(value)
                elif fn_name and key == "inputs" and isinstance(value, (list, tuple)):
                    converted.append("\n".join(json.dumps(arg) for arg in value))
                elif fn_name and key == "outputs":
                    converted.append(json.dumps(value))
                else:
                    raise ValueError(f"{where}: field 'tests.{key}[{i}]' must be a string, got {type(value).__name__}")
            columns[key] = tuple(converted)
        if len(columns["inputs"]) != len(columns["outputs"]):
            raise ValueError(
                f"{where}: field 'tests.outputs' has {len(columns['outputs'])} entries "
                f"but 'tests.inputs' has {len(columns['inputs'])}"
            )
        return cls(columns["inputs"], columns["outputs"], fn_name)


@dataclass(frozen=True)
class TestOutcome:
    """Verdict on one test case. `status` is one of STATUSES ("lost": the sandbox ended before reporting it)."""

    __test__ = False

    index: int
    status: str
    passed: bool
    time_s: float = 0.0
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: str = ""
    output_head: str = ""  # start of what the program printed (functional tests: of its JSON result)


@dataclass
class RunResult:
    """Everything one sandboxed run produced: the isolation mode that ran and one outcome per test."""

    mode: str
    outcomes: list[TestOutcome]
    total: int
    wall_s: float = 0.0
    error: str | None = None  # why the run ended early, when it did
    detail: str = ""  # isolation details, e.g. the uid
    uid: int | None = None  # host uid the program ran as

    @property
    def passed(self) -> int:
        """Number of tests passed."""
        return sum(o.passed for o in self.outcomes)

    @property
    def all_passed(self) -> bool:
        """True when every test passed (LiveCodeBench's pass criterion)."""
        return self.total > 0 and self.passed == self.total

    @property
    def fraction(self) -> float:
        """Fraction of tests passed, in [0, 1]."""
        return self.passed / self.total if self.total else 0.0

    def statuses(self) -> list[str]:
        """Status of each test in order ("lost" where none was reported)."""
        by_index = {o.index: o.status for o in self.outcomes}
        return [by_index.get(i, "lost") for i in range(self.total)]


# ----- output comparison (parent side) ------------------------------------------------------------------------
def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _as_decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stdout_matches(actual: str, expected: str) -> bool:
    """LiveCodeBench's stdout check: equal after stripping the text and every line; a differing line still
    matches when all its whitespace-separated tokens are numbers with equal values (e.g. "1.0" == "1")."""
    got, want = _stripped_lines(actual), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for a, b in zip(got, want):
        if a == b:
            continue
        da, db = _as_decimals(a), _as_decimals(b)
        if da is None or db is None or len(da) != len(db) or da != db:
            return False
    return True


def result_matches(actual_json: str, expected: str) -> bool:
    """LiveCodeBench's functional check: the returned value (as JSON; tuples become lists) equals the
    expected JSON value exactly; an expected output that is not JSON is compared as a stripped string."""
    try:
        actual = json.loads(actual_json)
    except (json.JSONDecodeError, TypeError):
        return False
    try:
        want = json.loads(expected)
    except json.JSONDecodeError:
        return isinstance(actual, str) and actual.strip() == expected.strip()
    return actual == want


# ----- the in-sandbox harness ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def harness_source() -> str:
    """Text of the trusted harness (`rsa/sandbox/harness.py`), written into every sandbox and run there."""
    return resources.files(__package__).joinpath("harness.py").read_text(encoding="utf-8")


# ----- host-side helpers ---------------------------------------------------------------------------------------
def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _site_dirs() -> list[str]:
    dirs = []
    candidates = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    candidates += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    for path in candidates:
        if os.path.isdir(path) and path not in dirs:
            dirs.append(path)
    return dirs


def _interpreter_paths(python: str) -> list[str]:
    """Directories the interpreter needs to start and import installed packages."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *_site_dirs()]
    exe_dir = os.path.dirname(os.path.abspath(python))
    real_dir = os.path.dirname(os.path.realpath(python))
    paths += [exe_dir, real_dir]
    if os.path.basename(real_dir) == "bin":  # <prefix>/bin/python: its standard library lives under <prefix>
        paths.append(os.path.dirname(real_dir))
    out: list[str] = []
    for path in paths:
        for variant in (os.path.abspath(path), os.path.realpath(path)):
            if os.path.isdir(variant) and variant not in out:
                out.append(variant)
    return out


def _untraversable_ancestor(path: str) -> str | None:
    """Highest ancestor of `path` that a stranger uid cannot traverse (no o+x), or None."""
    parts = os.path.abspath(path).split("/")[1:]
    current = ""
    for part in parts[:-1] if len(parts) > 1 else []:
        current += "/" + part
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return current
    return None


def _collapse(paths: Iterable[str]) -> list[str]:
    """Sorted paths with those nested inside another one dropped."""
    out: list[str] = []
    for path in sorted(set(paths)):
        if not any(_is_under(path, kept) for kept in out):
            out.append(path)
    return out


def _view_args(exposed: Sequence[str], hidden: Sequence[str], features: Iterable[str] = ("--perms",)) -> list[str]:
    """bwrap arguments building the sandbox's file system from an empty root: the system paths, the `exposed`
    directories (read-only), then `hidden` paths lying inside any of them covered (a directory by an empty
    tmpfs, a file by an empty file; a directory holding an exposed one stays)."""
    args: list[str] = []
    bound: list[str] = []
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
            bound.append(path)
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    for path in _ETC_PATHS:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    made: set[str] = set()
    for path in _collapse(exposed):
        if any(_is_under(path, b) for b in bound):
            continue
        # bwrap would make the missing parents mode 0700, which the unprivileged uid could not traverse
        parent = ""
        for part in path.strip("/").split("/")[:-1]:
            parent += "/" + part
            if parent not in made:
                args += ["--perms", "0755", "--dir", parent] if "--perms" in features else ["--dir", parent]
                made.add(parent)
        args += ["--ro-bind", path, path]
        bound.append(path)
    for path in _collapse(hidden):
        if not any(_is_under(path, b) and path != b for b in bound):
            continue  # not visible anyway
        if any(_is_under(e, path) for e in exposed):
            continue  # hiding it would hide the interpreter (its files listed in `hidden` are still hidden)
        if os.path.isdir(path):
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    return args


def _uid_processes(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` (only used for the sandbox's own claimed uids)."""
    if uid == 0 or uid == os.getuid():
        return
    for _ in range(5):
        pids = _uid_processes(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _id_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


# ----- leftovers of killed graders --------------------------------------------------------------------------------
# A run's host folder is named rsa-sandbox-<pid>.<start time>-<random>, after the grading process that made it, and
# that process holds an flock on it until it removes it. A folder whose owner is dead (the pid is gone, or now
# belongs to a process that started at another time) and whose lock is free was left by a grader killed with -9.
_HOST_DIR_PREFIX = "rsa-sandbox-"
_HOST_DIR_NAME = re.compile(r"rsa-sandbox-(\d+)\.(\d+)-[A-Za-z0-9_]+")


def _process_start_time(pid: int) -> str | None:
    """Start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat_line = f.read()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _owner_tag() -> str:
    """`<pid>.<start time>` of this process, the owner part of its sandbox folders' names."""
    return f"{os.getpid()}.{_process_start_time(os.getpid()) or 0}"


def _ours(info: os.stat_result) -> bool:
    """Whether a folder with this stat was made by a grader of our uid (as root: also a sandbox uid's)."""
    if info.st_uid == os.geteuid():
        return True
    return os.geteuid() == 0 and UID_BASE <= info.st_uid < UID_BASE + UID_COUNT


def clean_leftovers(directory: str | None = None) -> list[str]:
    """Remove sandbox folders in `directory` (default: the temp dir) left by graders that died; return them.

    Only folders named by `Sandbox` runs, owned by us (or, as root, by a sandbox uid), whose owning process is
    gone and whose lock no live process holds are removed: a concurrent grader's folders are never touched.
    """
    directory = directory or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _HOST_DIR_NAME.fullmatch(name)
        if match is None:
            continue
        pid, started = int(match.group(1)), match.group(2)
        if _process_start_time(pid) == started:
            continue  # its owner is alive
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or not _ours(info):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live process (perhaps in another PID namespace) still uses it
        try:
            shutil.rmtree(path, onerror=partial(_leftover_error, path))
            removed.append(path)
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d sandbox folder(s) left by killed graders in %s", len(removed), directory)
    return removed


class _Slot:
    """One worker's identity: the uid its programs run as (a claimed unused uid when root)."""

    def __init__(self) -> None:
        self.lock_fd: int | None = None
        if os.geteuid() != 0:
            self.uid, self.gid = os.getuid(), os.getgid()
            return
        lock_dir = os.path.join(tempfile.gettempdir(), "rsa-sandbox-uids")
        os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        info = os.lstat(lock_dir)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise SandboxError(f"{lock_dir} must be a directory owned by root with mode 0700")
        for uid in range(UID_BASE, UID_BASE + UID_COUNT):
            if _id_in_use(uid):
                continue  # a real account or group: not "unused"
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(os.path.join(lock_dir, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.lock_fd, self.uid, self.gid = fd, uid, uid
            _kill_uid(uid)  # leftovers of a crashed earlier owner
            return
        raise SandboxError(f"no free sandbox uid in {UID_BASE}..{UID_BASE + UID_COUNT - 1} (set RSA_SANDBOX_UID_BASE)")

    @property
    def dedicated(self) -> bool:
        return self.lock_fd is not None

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _help_text(command: str) -> str:
    try:
        return subprocess.run([command, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _bwrap_features(bwrap: str) -> set[str]:
    text = _help_text(bwrap)
    return {flag for flag in ("--disable-userns", "--size", "--perms", "--unshare-cgroup-try") if flag in text}


_PROBED: dict[tuple, tuple[str, str]] = {}
_PROBE_LOCK = threading.Lock()


class Sandbox:
    """Runs programs against test suites in isolated, resource-limited processes; thread-safe.

    `mode`: "auto" (bwrap when it works, else a loud fallback to "rlimits"), "bwrap" (fail if unavailable) or
    "rlimits". `max_workers` bounds concurrent sandboxes (default: CPU count). Programs see only the system
    paths and the interpreter's directories; `hidden_paths` (like the current working directory) are covered
    by an empty directory or file where they lie inside those.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        mode: str = "auto",
        max_workers: int | None = None,
        python: str | None = None,
        hidden_paths: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Sandbox mode must be one of {MODES}, got {mode!r}")
        self.limits = limits or Limits()
        self.max_workers = max(1, int(max_workers or os.cpu_count() or 1))
        # The harness runs with `-I -S` (no site-packages), so the real interpreter behind a virtual
        # environment serves, and it usually lives outside /tmp, which the sandbox replaces with a tmpfs.
        self.python = python or os.path.realpath(sys.executable)
        self.requested_mode = mode
        self.hidden_paths = tuple(os.path.realpath(p) for p in hidden_paths)
        self._bwrap = shutil.which("bwrap")
        self._setpriv = shutil.which("setpriv")
        self._features = _bwrap_features(self._bwrap) if self._bwrap else set()
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._n_slots = 0
        self._slot_lock = threading.Lock()
        self._mode: str | None = None
        self._mode_reason = ""
        self._drop_ok: bool | None = None
        clean_leftovers()

    # ----- public API -----------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The isolation mode runs use: "bwrap" or "rlimits" (probed on first use)."""
        if self._mode is None:
            self._resolve_mode()
        return self._mode  # type: ignore[return-value]

    def run(self, program: str, tests: TestSuite, *, fail_fast: bool = False) -> RunResult:
        """Run `program` on every test of `tests` in one fresh sandbox and compare outputs in this process.

        `fail_fast` stops at the first failed test (the rest count as failed). Raises SandboxError when the
        sandbox cannot start or set up a test (before any program code runs); misbehaviour of the program only
        fails its tests.
        """
        if not isinstance(tests, TestSuite):
            raise TypeError(f"tests must be a TestSuite, got {type(tests).__name__}")
        mode = self.mode
        slot = self._acquire_slot()
        try:
            return self._run_in_slot(program, tests, slot, mode, fail_fast)
        finally:
            self._slots.put(slot)

    def run_many(
        self, jobs: Sequence[tuple[str, TestSuite]], *, fail_fast: bool = False, max_workers: int | None = None
    ) -> list[RunResult]:
        """Run (program, tests) jobs in parallel over at most `max_workers` sandboxes; results in job order."""
        if not jobs:
            return []
        self.mode  # noqa: B018 -- probe once before the workers start
        workers = min(len(jobs), max_workers or self.max_workers, self.max_workers)
        if workers == 1:
            return [self.run(program, tests, fail_fast=fail_fast) for program, tests in jobs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsa-sandbox") as pool:
            return list(pool.map(lambda job: self.run(job[0], job[1], fail_fast=fail_fast), jobs))

    def close(self) -> None:
        """Release the claimed uids (idempotent)."""
        while True:
            try:
                self._slots.get_nowait().release()
            except queue.Empty:
                return

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing sensible left to do
            self.close()

    # ----- mode selection -------------------------------------------------------------------------------------
    def _resolve_mode(self) -> None:
        with _PROBE_LOCK:
            if self._mode is not None:
                return
            if self.requested_mode == "rlimits":
                self._mode, self._mode_reason = "rlimits", "requested"
                return
            key = (self._bwrap, self._setpriv, self.python, os.geteuid(), self.hidden_paths, os.getcwd())
            if key not in _PROBED:
                _PROBED[key] = self._probe_bwrap()
            mode, reason = _PROBED[key]
            if mode != "bwrap":
                if self.requested_mode == "bwrap":
                    raise SandboxError(f"bubblewrap sandbox unavailable: {reason}")
                logger.warning(
                    "SANDBOX FALLBACK: bubblewrap isolation is unavailable (%s); untrusted code will run with "
                    "rlimits only -- no file-system, network or PID isolation. Install it with "
                    "`apt-get install -y bubblewrap` and allow user namespaces.",
                    reason,
                )
            self._mode, self._mode_reason = mode, reason

    def _probe_bwrap(self) -> tuple[str, str]:
        if not self._bwrap:
            return "rlimits", "the `bwrap` command was not found"
        if os.geteuid() == 0 and not self._setpriv:
            return "rlimits", "running as root needs `setpriv` (util-linux) to drop to an unprivileged uid"
        if "--disable-userns" not in self._features:
            logger.warning(
                "bwrap lacks --disable-userns (needs bubblewrap >= 0.8): nested user namespaces stay possible"
            )
        slot = self._acquire_slot()
        try:
            probe = TestSuite(("41\n",), ("42\n",))
            result = self._run_in_slot("print(int(input()) + 1)", probe, slot, "bwrap", False, limits=Limits())
        except SandboxError as exc:
            return "rlimits", str(exc)
        finally:
            self._slots.put(slot)
        if not result.all_passed:
            return "rlimits", f"probe program did not pass inside bwrap: {result.statuses()} {result.error or ''}"
        return "bwrap", "probe passed"

    def _acquire_slot(self) -> _Slot:
        with self._slot_lock:
            try:
                return self._slots.get_nowait()
            except queue.Empty:
                if self._n_slots < self.max_workers:
                    self._n_slots += 1
                    try:
                        return _Slot()
                    except BaseException:
                        self._n_slots -= 1
                        raise
        return self._slots.get()

    # ----- one run ----------------------------------------------------------------------------------------------
    def _env(self, home: str) -> dict[str, str]:
        return {
            "PATH": _SAFE_PATH,
            "HOME": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }

    def _write_spec(
        self, program: str, tests: TestSuite, host_dir: str, mode: str, slot: _Slot, limits: Limits
    ) -> None:
        inside = mode == "bwrap"
        work_dir = _IN_WORK if inside else os.path.join(host_dir, "work")
        io_dir = _IN_IO if inside else os.path.join(host_dir, "io")
        drop = inside or self._fallback_drops_uid(slot)
        spec = {
            "n": len(tests),
            "fn_name": tests.fn_name,
            "timeout_s": limits.timeout_s,
            "cpu_s": limits.cpu_limit_s,
            "memory_bytes": int(limits.memory_mb) << 20,
            "max_processes": int(limits.max_processes),
            "max_output_bytes": int(limits.max_output_bytes),
            "max_open_files": int(limits.max_open_files),
            "work_dir": work_dir,
            "io_dir": io_dir,
            "site_dirs": _site_dirs(),
            # kill(-1) is safe only where every process this uid can signal belongs to this sandbox.
            "kill_all": inside or (slot.dedicated and drop),
        }
        files = {"spec.json": json.dumps(spec), "harness.py": harness_source(), "solution.py": program}
        files.update({f"in{i}": text for i, text in enumerate(tests.inputs)})
        for name, text in files.items():
            with open(os.path.join(host_dir, name), "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(text)
        if not inside:
            for sub in ("work", "io"):
                os.mkdir(os.path.join(host_dir, sub), 0o700)
        if slot.dedicated and drop:
            for root, dirs, names in os.walk(host_dir):
                for name in [*dirs, *names]:
                    os.chown(os.path.join(root, name), slot.uid, slot.gid)
            os.chown(host_dir, slot.uid, slot.gid)

    def _view(self) -> list[str]:
        """bwrap arguments for the file system a program sees: system paths and the interpreter, nothing else."""
        exposed = [p for p in _interpreter_paths(self.python) if p != "/"]
        with _PROCESS_HIDDEN_LOCK:
            hidden = [os.getcwd(), *self.hidden_paths, *_PROCESS_HIDDEN]
        return _view_args(exposed, hidden, self._features)

    def _bwrap_command(self, host_dir: str, slot: _Slot, limits: Limits) -> list[str]:
        sized = "--size" in self._features
        tmpfs_size = ["--size", str(int(limits.tmpfs_mb) << 20)] if sized else []
        # captured output lives on its own tmpfs, so a program filling /tmp cannot starve the capture
        io_size = ["--size", str(2 * int(limits.max_output_bytes) + (4 << 20))] if sized else []
        inner = [self._bwrap, "--unshare-all", "--unshare-user"]
        if "--disable-userns" in self._features:
            inner.append("--disable-userns")
        inner += ["--as-pid-1", "--die-with-parent", "--new-session"]
        # Unprivileged caller: one bwrap, same uid, which builds the view itself; as root the outer bwrap built it
        inner += self._view() if not slot.dedicated else ["--ro-bind", "/", "/"]
        # bwrap's /dev is a tmpfs of half the host RAM, writable (/dev/shm included) and outside RLIMIT_AS: make it
        # read-only, and give /dev/shm (POSIX shared memory, multiprocessing semaphores) its own capped tmpfs
        inner += ["--dev", "/dev", "--remount-ro", "/dev"]
        if sized and limits.shm_mb > 0:
            inner += ["--size", str(int(limits.shm_mb) << 20), "--tmpfs", "/dev/shm"]
        inner += ["--proc", "/proc"]
        inner += [*tmpfs_size, "--tmpfs", "/tmp"]
        # an interpreter installed under /tmp would vanish under the tmpfs: bind its own directories back,
        # read-only (only the interpreter's: the harness runs with -I -S and needs no site-packages)
        for path in dict.fromkeys(
            (os.path.dirname(os.path.realpath(self.python)), sys.base_prefix, sys.base_exec_prefix)
        ):
            if _is_under(os.path.realpath(path), "/tmp") and os.path.isdir(path):
                inner += ["--ro-bind", os.path.realpath(path), os.path.realpath(path)]
        inner += ["--ro-bind", host_dir, _IN_SPEC, "--dir", _IN_WORK]
        inner += [*io_size, "--tmpfs", _IN_IO]
        if not slot.dedicated:
            inner += ["--remount-ro", "/"]  # the empty root bwrap built the view on stays unwritable
        inner += ["--chdir", _IN_WORK, "--hostname", "sandbox", "--clearenv"]
        for key, value in self._env(_IN_WORK).items():
            inner += ["--setenv", key, value]
        inner += ["--", self.python, "-I", "-S", f"{_IN_SPEC}/harness.py", _IN_SPEC]
        if not slot.dedicated:
            return inner
        # Root: the outer bwrap builds the view (system paths and the interpreter on an empty root, plus the run's
        # folder and the host /proc the inner bwrap needs to set itself up), then setpriv drops to the claimed
        # uid with no groups and no capabilities before the inner bwrap starts.
        cgroup = "--unshare-cgroup-try" if "--unshare-cgroup-try" in self._features else "--unshare-cgroup"
        outer = [self._bwrap, "--unshare-net", "--unshare-ipc", "--unshare-uts", cgroup, "--die-with-parent"]
        outer += ["--new-session", *self._view(), "--bind", "/proc", "/proc", "--dev", "/dev", "--dir", "/tmp"]
        outer += ["--ro-bind", host_dir, host_dir, "--remount-ro", "/", "--clearenv", "--"]
        drop = [self._setpriv, f"--reuid={slot.uid}", f"--regid={slot.gid}", "--clear-groups"]
        # Killing the outer bwrap does not take the inner one down (a parent-death signal cannot cross from the
        # capability-less root monitor to another uid), so `_stop` then kills every process of the claimed uid.
        drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        return [*outer, *drop, *inner]

    def _fallback_drops_uid(self, slot: _Slot) -> bool:
        """Whether the rlimits fallback can run as the claimed uid (it must reach the interpreter)."""
        if not slot.dedicated:
            return False
        if self._drop_ok is None:
            paths = [os.path.realpath(self.python), *_interpreter_paths(self.python)]
            self._drop_ok = not any(_untraversable_ancestor(p) for p in paths)
            if not self._drop_ok:
                logger.warning(
                    "SANDBOX FALLBACK RUNS AS ROOT: the interpreter %s is not reachable by an unprivileged uid, so "
                    "rlimits-only runs keep the caller's uid 0 (no process-count limit binds root)",
                    self.python,
                )
        return self._drop_ok

    def _run_in_slot(
        self, program: str, tests: TestSuite, slot: _Slot, mode: str, fail_fast: bool, limits: Limits | None = None
    ) -> RunResult:
        limits = limits or self.limits
        start = time.monotonic()
        drop = mode == "bwrap" or self._fallback_drops_uid(slot)
        uid = slot.uid if drop else os.getuid()
        detail = f"uid {uid}" + (" (dedicated)" if drop and slot.dedicated else " (caller's uid)")
        host_dir = tempfile.mkdtemp(prefix=f"{_HOST_DIR_PREFIX}{_owner_tag()}-")
        dir_lock: int | None = None
        try:
            # held until the folder is removed: tells `clean_leftovers` in other processes that its owner is alive
            dir_lock = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(dir_lock, fcntl.LOCK_EX)
            self._write_spec(program, tests, host_dir, mode, slot, limits)
            popen_kwargs: dict[str, Any] = {}
            if mode == "bwrap":
                command = self._bwrap_command(host_dir, slot, limits)
                cwd = "/"
            else:
                command = [self.python, "-I", "-S", os.path.join(host_dir, "harness.py"), host_dir]
                cwd = os.path.join(host_dir, "work")
                if drop and slot.dedicated:
                    popen_kwargs.update(user=slot.uid, group=slot.gid, extra_groups=[], umask=0o077)
            env = self._env(cwd if mode != "bwrap" else "/nonexistent")
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=cwd,
                    env=env,
                    start_new_session=True,
                    **popen_kwargs,
                )
            except OSError as exc:
                raise SandboxError(f"could not start the sandbox ({command[0]}): {exc}") from exc
            result = self._collect(proc, tests, mode, slot, fail_fast, start, limits)
            result.detail, result.uid = detail, uid
            return result
        finally:
            shutil.rmtree(host_dir, onerror=_force_remove)
            if dir_lock is not None:
                os.close(dir_lock)

    def _collect(
        self,
        proc: subprocess.Popen,
        tests: TestSuite,
        mode: str,
        slot: _Slot,
        fail_fast: bool,
        start: float,
        limits: Limits,
    ) -> RunResult:
        """Read the harness's records until it ends, a deadline passes or fail-fast stops; judge every test."""
        progress = _Progress(tests, fail_fast, cap=len(tests) * (limits.max_output_bytes + 4096) + (1 << 20))
        ready_deadline = start + limits.startup_s
        deadline = start + limits.overall_deadline_s(len(tests))
        stderr_tail = bytearray()
        selector = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
        try:
            while selector.get_map() and progress.error is None:
                limit_at = deadline if progress.ready else ready_deadline
                remaining = limit_at - time.monotonic()
                if remaining <= 0:
                    progress.error = (
                        "overall time limit exceeded"
                        if progress.ready
                        else f"sandbox did not start within {limits.startup_s:g} s"
                    )
                    break
                for key, _ in selector.select(timeout=remaining):
                    try:
                        chunk = os.read(key.fileobj.fileno(), 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stderr:
                        stderr_tail += chunk
                        del stderr_tail[:-4096]
                    else:
                        progress.feed(chunk)
        finally:
            selector.close()
            still_running = proc.poll() is None and not progress.done
            self._stop(proc, slot, force=still_running or progress.error is not None)
        if not progress.ready:
            message = stderr_tail.decode("utf-8", "replace").strip()
            raise SandboxError(
                f"sandbox failed to start ({mode}): {progress.error or 'exited early'}; stderr: {message[-1500:]}"
            )
        if progress.fatal is not None:
            raise SandboxError(f"sandbox harness failed ({mode}): {progress.fatal}")
        error = progress.error
        if not progress.done and error is None:
            error = (
                f"sandbox ended after {len(progress.outcomes)} of {len(tests)} tests (exit status {proc.returncode})"
            )
        outcomes = [progress.outcomes[i] for i in sorted(progress.outcomes)]
        return RunResult(mode=mode, outcomes=outcomes, total=len(tests), wall_s=time.monotonic() - start, error=error)

    def _stop(self, proc: subprocess.Popen, slot: _Slot, force: bool) -> None:
        if force and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("sandbox process %d did not exit after SIGKILL", proc.pid)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if slot.dedicated and (force or self._mode == "rlimits"):
            _kill_uid(slot.uid)


def _judge(header: Mapping[str, Any], out: bytes, err: bytes, tests: TestSuite) -> TestOutcome | None:
    """The outcome of one harness record, comparing its output with the expected one; None if malformed."""
    index, status = header.get("i"), header.get("status")
    if not isinstance(index, int) or not 0 <= index < len(tests) or status not in STATUSES:
        return None
    text = out.decode("utf-8", "replace")
    passed = False
    if status == "ok":
        expected = tests.outputs[index]
        passed = result_matches(text, expected) if tests.fn_name else stdout_matches(text, expected)
    return TestOutcome(
        index=index,
        status=status,
        passed=passed,
        time_s=float(header.get("time_s") or 0.0),
        exit_code=header.get("exit"),
        signal=header.get("signal"),
        stderr_tail=err.decode("utf-8", "replace"),
        output_head=text[:OUTPUT_HEAD_CHARS],
    )


class _Progress:
    """What the harness has reported so far; `error` is set when the run must stop early."""

    def __init__(self, tests: TestSuite, fail_fast: bool, cap: int) -> None:
        self.tests, self.fail_fast = tests, fail_fast
        self.reader = _FrameReader(cap)
        self.outcomes: dict[int, TestOutcome] = {}
        self.ready = self.done = False
        self.error: str | None = None
        self.fatal: str | None = None

    def feed(self, chunk: bytes) -> None:
        try:
            frames = self.reader.feed(chunk)
        except ValueError as exc:
            self.error = f"protocol violation: {exc}"
            return
        for header, out, err in frames:
            if header.get("ready"):
                self.ready = True
            elif header.get("done"):
                self.done = True
            elif "fatal" in header:
                # only the harness itself reports these (before the program's code runs): an infrastructure failure
                self.fatal = f"{header['fatal']} {err.decode('utf-8', 'replace')}".strip()
                self.error = f"harness: {self.fatal}"
            else:
                outcome = _judge(header, out, err, self.tests)
                if outcome is None or outcome.index in self.outcomes:
                    self.error = f"protocol violation: unexpected record {dict(header)!r}"
                    return
                self.outcomes[outcome.index] = outcome
                if self.fail_fast and not outcome.passed:
                    self.error = f"stopped at first failed test ({outcome.index})"
            if self.error is not None:
                return


class _FrameReader:
    """Incremental parser of the harness protocol: a JSON header line, then `out` + `err` raw bytes."""

    def __init__(self, cap: int) -> None:
        self.buffer = bytearray()
        self.header: dict | None = None
        self.cap = cap
        self.total = 0

    def feed(self, chunk: bytes) -> list[tuple[dict, bytes, bytes]]:
        self.total += len(chunk)
        if self.total > self.cap:
            raise ValueError(f"sandbox sent more than {self.cap} bytes")
        self.buffer += chunk
        frames = []
        while True:
            if self.header is None:
                newline = self.buffer.find(b"\n")
                if newline < 0:
                    if len(self.buffer) > 65536:
                        raise ValueError("record header too long")
                    return frames
                try:
                    header = json.loads(bytes(self.buffer[:newline]))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"malformed record header ({exc.msg})") from None
                if not isinstance(header, dict):
                    raise ValueError("record header is not an object")
                del self.buffer[: newline + 1]
                self.header = header
            n_out, n_err = int(self.header.get("out", 0)), int(self.header.get("err", 0))
            if n_out < 0 or n_err < 0:
                raise ValueError("negative record length")
            if len(self.buffer) < n_out + n_err:
                return frames
            out = bytes(self.buffer[:n_out])
            err = bytes(self.buffer[n_out : n_out + n_err])
            del self.buffer[: n_out + n_err]
            frames.append((self.header, out, err))
            self.header = None


def _force_remove(func, path, exc_info) -> None:  # noqa: ANN001 -- shutil.rmtree's onerror signature
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)
    except OSError:
        logger.warning("could not remove sandbox file %s", path)


def _leftover_error(top: str, func, path, exc_info) -> None:  # noqa: ANN001 -- shutil.rmtree's onerror signature
    """rmtree error handler for a dead grader's folder, whose program may still run and may race the removal.

    As root, permissions never block the removal, so nothing is chmod-ed (a chmod follows symlinks a program
    could plant); as a normal user the program has our own uid anyway, so the usual forced removal applies,
    below the folder `top` only (never a chmod of the temp dir itself).
    """
    if os.geteuid() == 0 or path == top:
        logger.warning("could not remove leftover sandbox file %s", path)
        return
    _force_remove(func, path, exc_info)


# ----- shared default -------------------------------------------------------------------------------------------
_DEFAULT: Sandbox | None = None
_DEFAULT_LOCK = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox with default limits; RSA_SANDBOX_MODE and RSA_SANDBOX_WORKERS configure it."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            workers = os.environ.get("RSA_SANDBOX_WORKERS")
            _DEFAULT = Sandbox(
                mode=os.environ.get("RSA_SANDBOX_MODE", "auto"),
                max_workers=int(workers) if workers else None,
            )
        return _DEFAULT
