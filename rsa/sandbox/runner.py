"""The `Sandbox` itself (host side): choosing the isolation mode, claiming worker slots, and one run from start to end.

A run writes the program, the spec and the test inputs into a fresh host folder (`rsa.sandbox.cleanup`), starts
the in-sandbox harness (`harness_source`) under the isolation that `rsa.sandbox.isolation` builds, reads the
harness's records through a bounded parser (`_FrameReader`, `_Progress`), has each judged against the expected
outputs in this process (`rsa.sandbox.grading`), and kills what is left at the end or at the deadline. The package
docstring (`rsa/sandbox/__init__.py`) states what the sandbox guarantees and what it does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from typing import Any

from rsa.sandbox.cleanup import _HOST_DIR_PREFIX, _force_remove, _owner_tag, clean_leftovers
from rsa.sandbox.grading import RunResult, TestOutcome, TestSuite, _judge
from rsa.sandbox.isolation import (
    _IN_IO,
    _IN_WORK,
    Limits,
    SandboxError,
    _bwrap_command,
    _bwrap_features,
    _interpreter_paths,
    _kill_uid,
    _scrubbed_env,
    _site_dirs,
    _Slot,
    _untraversable_ancestor,
)

logger = logging.getLogger(__name__)

MODES = ("auto", "bwrap", "rlimits")


# ----- the in-sandbox harness ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def harness_source() -> str:
    """Text of the trusted harness (`rsa/sandbox/harness.py`), written into every sandbox and run there."""
    return resources.files(__package__).joinpath("harness.py").read_text(encoding="utf-8")


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
                command = _bwrap_command(
                    host_dir,
                    slot,
                    limits,
                    bwrap=self._bwrap,
                    setpriv=self._setpriv,
                    python=self.python,
                    features=self._features,
                    hidden_paths=self.hidden_paths,
                )
                cwd = "/"
            else:
                command = [self.python, "-I", "-S", os.path.join(host_dir, "harness.py"), host_dir]
                cwd = os.path.join(host_dir, "work")
                if drop and slot.dedicated:
                    popen_kwargs.update(user=slot.uid, group=slot.gid, extra_groups=[], umask=0o077)
            env = _scrubbed_env(cwd if mode != "bwrap" else "/nonexistent")
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
