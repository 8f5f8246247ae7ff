"""Isolation (host side): how a sandbox is built around a program, the part a security review reads first.

It owns the bubblewrap command (`_bwrap_command`: new user, PID, IPC, UTS, network and cgroup namespaces, no
nested user namespaces, a read-only /dev, private size-limited /tmp and /dev/shm), the view of the file system
from an empty root (`_program_view`, `_view_args`: the system paths and the interpreter's directories read-only,
hidden paths covered), the scrubbed environment (`_scrubbed_env`), the unprivileged uid a program runs as when
the grader is root (`_Slot`, claimed with a lock file, and `_kill_uid`), and the resource `Limits` the harness
applies. What the isolation guarantees and what it does not is stated in `rsa/sandbox/__init__.py`. Names with a
leading underscore are internal to `rsa.sandbox`.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import math
import os
import pwd
import signal
import site
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: first uid/gid of the unprivileged ids used as root (one per concurrent sandbox)
UID_BASE = int(os.environ.get("RSA_SANDBOX_UID_BASE", "61000"))
UID_COUNT = 1024

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


# ----- the bwrap command ---------------------------------------------------------------------------------------
def _scrubbed_env(home: str) -> dict[str, str]:
    """The whole environment of a sandbox process (nothing of the caller's): a fixed PATH, `home`, a UTF-8 locale,
    one thread for the numeric libraries."""
    return {
        "PATH": _SAFE_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _program_view(python: str, hidden_paths: Sequence[str], features: Iterable[str]) -> list[str]:
    """bwrap arguments for the file system a program sees: system paths and the interpreter, nothing else."""
    exposed = [p for p in _interpreter_paths(python) if p != "/"]
    with _PROCESS_HIDDEN_LOCK:
        hidden = [os.getcwd(), *hidden_paths, *_PROCESS_HIDDEN]
    return _view_args(exposed, hidden, features)


def _bwrap_command(
    host_dir: str,
    slot: _Slot,
    limits: Limits,
    *,
    bwrap: str,
    setpriv: str | None,
    python: str,
    features: set[str],
    hidden_paths: Sequence[str],
) -> list[str]:
    """The command that runs the harness on the run folder `host_dir` in bubblewrap: new namespaces, the view from
    an empty root, private size-limited /tmp and /dev/shm, a read-only /dev, the scrubbed environment; as root
    wrapped in an outer bwrap that builds the view and `setpriv`, which drops to `slot`'s uid."""
    view = _program_view(python, hidden_paths, features)  # the file system the program sees
    sized = "--size" in features
    tmpfs_size = ["--size", str(int(limits.tmpfs_mb) << 20)] if sized else []
    # captured output lives on its own tmpfs, so a program filling /tmp cannot starve the capture
    io_size = ["--size", str(2 * int(limits.max_output_bytes) + (4 << 20))] if sized else []
    inner = [bwrap, "--unshare-all", "--unshare-user"]
    if "--disable-userns" in features:
        inner.append("--disable-userns")
    inner += ["--as-pid-1", "--die-with-parent", "--new-session"]
    # Unprivileged caller: one bwrap, same uid, which builds the view itself; as root the outer bwrap built it
    inner += view if not slot.dedicated else ["--ro-bind", "/", "/"]
    # bwrap's /dev is a tmpfs of half the host RAM, writable (/dev/shm included) and outside RLIMIT_AS: make it
    # read-only, and give /dev/shm (POSIX shared memory, multiprocessing semaphores) its own capped tmpfs
    inner += ["--dev", "/dev", "--remount-ro", "/dev"]
    if sized and limits.shm_mb > 0:
        inner += ["--size", str(int(limits.shm_mb) << 20), "--tmpfs", "/dev/shm"]
    inner += ["--proc", "/proc"]
    inner += [*tmpfs_size, "--tmpfs", "/tmp"]
    # an interpreter installed under /tmp would vanish under the tmpfs: bind its own directories back,
    # read-only (only the interpreter's: the harness runs with -I -S and needs no site-packages)
    for path in dict.fromkeys((os.path.dirname(os.path.realpath(python)), sys.base_prefix, sys.base_exec_prefix)):
        if _is_under(os.path.realpath(path), "/tmp") and os.path.isdir(path):
            inner += ["--ro-bind", os.path.realpath(path), os.path.realpath(path)]
    inner += ["--ro-bind", host_dir, _IN_SPEC, "--dir", _IN_WORK]
    inner += [*io_size, "--tmpfs", _IN_IO]
    if not slot.dedicated:
        inner += ["--remount-ro", "/"]  # the empty root bwrap built the view on stays unwritable
    inner += ["--chdir", _IN_WORK, "--hostname", "sandbox", "--clearenv"]
    for key, value in _scrubbed_env(_IN_WORK).items():
        inner += ["--setenv", key, value]
    inner += ["--", python, "-I", "-S", f"{_IN_SPEC}/harness.py", _IN_SPEC]
    if not slot.dedicated:
        return inner
    # Root: the outer bwrap builds the view (system paths and the interpreter on an empty root, plus the run's
    # folder and the host /proc the inner bwrap needs to set itself up), then setpriv drops to the claimed
    # uid with no groups and no capabilities before the inner bwrap starts.
    cgroup = "--unshare-cgroup-try" if "--unshare-cgroup-try" in features else "--unshare-cgroup"
    outer = [bwrap, "--unshare-net", "--unshare-ipc", "--unshare-uts", cgroup, "--die-with-parent"]
    outer += ["--new-session", *view, "--bind", "/proc", "/proc", "--dev", "/dev", "--dir", "/tmp"]
    outer += ["--ro-bind", host_dir, host_dir, "--remount-ro", "/", "--clearenv", "--"]
    drop = [setpriv, f"--reuid={slot.uid}", f"--regid={slot.gid}", "--clear-groups"]
    # Killing the outer bwrap does not take the inner one down (a parent-death signal cannot cross from the
    # capability-less root monitor to another uid), so `Sandbox._stop` then kills every process of the claimed uid.
    drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return [*outer, *drop, *inner]
