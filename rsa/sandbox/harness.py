"""The trusted in-sandbox harness: runs one program on every test case and reports raw outputs.

This file is NOT imported by the grading process at run time. `rsa.sandbox.runner` reads its text (through
`importlib.resources`) and writes it next to the spec; the sandbox's interpreter then runs it as a standalone
script, `python -I -S harness.py SPEC_DIR`. It may therefore import only the standard library, and nothing
that `-S` leaves out (no site-packages, no `rsa`). Tests import it as a module to check its pure helpers;
`main()` runs only when it is executed as a script.

Protocol: it forks one child per test; the child lowers its rlimits, redirects fds 0/1/2 to the test's files,
closes every other fd, and only then runs the untrusted program. The harness itself is made non-dumpable so
children (same uid) can neither ptrace it nor open its fds through /proc. It reports raw outputs over its
stdout as frames (a JSON header line, then `out` + `err` raw bytes); it never sees expected outputs.
"""

import contextlib
import json
import os
import resource
import select
import signal
import sys
import time

MEMORY_EXIT, NO_RESULT_EXIT = 121, 123
PRELUDE = """
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics
import itertools, functools, operator, io, sys, json, typing
"""


def write_all(data):
    """Write all of `data` to fd 1 (the harness's report pipe)."""
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def frame(header, out=b"", err=b""):
    """Send one record: the JSON `header` (with the byte counts added), then `out` and `err` raw."""
    header["out"], header["err"] = len(out), len(err)
    write_all(json.dumps(header).encode() + b"\n" + out + err)


def make_undumpable():
    """prctl(PR_SET_DUMPABLE, 0): test processes of the same uid cannot ptrace us or open our fds."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def own_task_count():
    """Threads of every process of this uid (the baseline that RLIMIT_NPROC counts against)."""
    uid, count = os.getuid(), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields.get("Threads", "1"))
        except (OSError, KeyError, ValueError):
            continue
    return count


def set_limits(spec, base_tasks):
    """Lower this process's rlimits to the spec's values (never above an existing hard limit)."""

    def cap(res, value):
        _, hard = resource.getrlimit(res)
        value = int(value)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NOFILE, spec["max_open_files"])
    cap(resource.RLIMIT_FSIZE, spec["max_output_bytes"])
    cap(resource.RLIMIT_NPROC, base_tasks + spec["max_processes"])
    soft = int(spec["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))
    cap(resource.RLIMIT_AS, spec["memory_bytes"])


def finish():
    """What a normal interpreter exit does: join non-daemon threads, run atexit hooks, flush."""
    import atexit
    import threading

    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()


def child(spec, i, base_tasks, setup_fd):
    """Body of the forked process for test `i`: set up, then run the program; never returns."""
    # Until `setup_fd` receives its byte, nothing untrusted has run: a child that exits without it failed to set
    # up (an infrastructure error), which the program cannot fake because it only starts after the byte is sent.
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setpgid(0, 0)
        fd_in = os.open(os.path.join(spec["spec_dir"], f"in{i}"), os.O_RDONLY)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd_out = os.open(os.path.join(spec["io_dir"], f"out{i}"), flags, 0o600)
        fd_err = os.open(os.path.join(spec["io_dir"], f"err{i}"), flags, 0o600)
        os.dup2(fd_in, 0)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        os.closerange(3, setup_fd)
        os.closerange(setup_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir(spec["work_dir"])
        set_limits(spec, base_tasks)
        import builtins

        # the program's standard streams: they live as long as the process, so no context manager
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.argv = ["solution.py"]
        result_path = os.path.join(spec["io_dir"], f"res{i}")
        call = spec["fn_name"] is not None
        with open(os.path.join(spec["spec_dir"], "solution.py"), encoding="utf-8") as f:
            source = f.read()
        if call:
            with open(os.path.join(spec["spec_dir"], f"in{i}"), encoding="utf-8") as f:
                arg_text = f.read()
        os.write(setup_fd, b"1")
        os.close(setup_fd)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    try:
        namespace = {
            "__name__": "solution" if call else "__main__",
            "__builtins__": builtins,
            "__file__": "solution.py",
        }
        exec(PRELUDE, namespace)
        exec(compile(source, "solution.py", "exec"), namespace)
        if call:
            name = spec["fn_name"]
            holder = namespace.get("Solution")
            if isinstance(holder, type) and hasattr(holder, name):
                fn = getattr(holder(), name)
            elif callable(namespace.get(name)):
                fn = namespace[name]
            else:
                raise NameError(f"the program defines neither Solution.{name} nor a function {name}")
            args = [json.loads(line) for line in arg_text.split("\n") if line.strip()]
            payload = json.dumps(fn(*args))
            with open(result_path, "w", encoding="utf-8") as f:
                f.write(payload)
        finish()
    except SystemExit as exc:
        code = exc.code
        if call:
            os._exit(NO_RESULT_EXIT)
        try:
            if code is not None and not isinstance(code, int):
                print(code, file=sys.stderr)
            finish()
        except BaseException:
            os._exit(1)
        os._exit(0 if code is None or code == 0 else (code if isinstance(code, int) and 0 < code < 256 else 1))
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # the program may have broken stderr; the exit status still counts
            pass
        os._exit(1)
    os._exit(0)


def wait_for(pid, timeout, kill_all):
    """Wait up to `timeout` s for child `pid`; on expiry kill it (and the rest). Returns (status, timed_out)."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if pidfd is not None:
            select.select([pidfd], [], [], remaining)
        else:
            time.sleep(min(remaining, 0.005))
    if pidfd is not None:
        os.close(pidfd)
    if done:
        return status, False
    kill_rest(pid, kill_all)
    return os.waitpid(pid, 0)[1], True


def kill_rest(pgid, kill_all):
    """SIGKILL the test's process group and, when `kill_all` (sandbox-owned uid), every process we can reach."""
    for target in (-pgid, -1):
        if target == -1 and not (kill_all and os.getuid() != 0):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


def reap():
    """Collect every exited child without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def read_capped(path, limit, tail=False):
    """At most `limit` + 1 bytes of `path` (its end when `tail`), deleting the file; None when it is missing."""
    try:
        with open(path, "rb") as f:
            if tail:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - limit))
            data = f.read(limit + 1)
        os.unlink(path)
        return data
    except FileNotFoundError:
        return None


def verdict(*, timed_out, code, sig, set_up, out_len, res_len, limit, err, functional):
    """The status of one finished test from its exit (`code` or signal `sig`) and output sizes.

    `res_len` is the size of the functional result file, None when it was not written. Returns one of the
    parent's STATUSES, or None when the test could not be set up (an infrastructure failure, not a verdict).
    """
    if not set_up and not timed_out:
        return None
    if timed_out or sig == signal.SIGXCPU:
        return "timeout"
    if out_len >= limit or (res_len is not None and res_len >= limit) or sig == signal.SIGXFSZ:
        return "output_limit"
    if sig == signal.SIGKILL:
        return "killed"
    if sig is not None:
        return "runtime_error"
    if code == MEMORY_EXIT:
        return "memory_limit"
    if code == NO_RESULT_EXIT:
        return "no_result"
    if code != 0:
        return "output_limit" if code == 1 and b"OSError: [Errno 27]" in err else "runtime_error"
    if functional and res_len is None:
        return "no_result"
    return "ok"


def main():
    """Run every test of the spec in `sys.argv[1]` and report one frame per test, then `done`."""
    spec_dir = sys.argv[1]
    with open(os.path.join(spec_dir, "spec.json"), encoding="utf-8") as f:
        spec = json.load(f)
    spec["spec_dir"] = spec_dir
    sys.path.extend(spec["site_dirs"])
    import builtins

    if not hasattr(builtins, "exit"):  # `python -S` has no site-provided exit()/quit()
        builtins.exit = builtins.quit = sys.exit
    make_undumpable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # test processes may signal the harness; it carries on
    exec(PRELUDE, {})  # warm the imports every child needs
    base_tasks = own_task_count()
    frame({"ready": True, "uid": os.getuid(), "pid": os.getpid()})
    limit = spec["max_output_bytes"]
    for i in range(spec["n"]):
        start = time.monotonic()
        setup_r, setup_w = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            frame({"fatal": f"cannot fork test {i}: {exc}"})
            return
        if pid == 0:
            os.close(setup_r)
            child(spec, i, base_tasks, setup_w)
        os.close(setup_w)
        status, timed_out = wait_for(pid, spec["timeout_s"], spec["kill_all"])
        set_up = os.read(setup_r, 1) == b"1"
        os.close(setup_r)
        elapsed = time.monotonic() - start
        kill_rest(pid, spec["kill_all"])
        reap()
        out = read_capped(os.path.join(spec["io_dir"], f"out{i}"), limit) or b""
        err = read_capped(os.path.join(spec["io_dir"], f"err{i}"), 2000, tail=True) or b""
        res = read_capped(os.path.join(spec["io_dir"], f"res{i}"), limit)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        status_name = verdict(
            timed_out=timed_out,
            code=code,
            sig=sig,
            set_up=set_up,
            out_len=len(out),
            res_len=None if res is None else len(res),
            limit=limit,
            err=err,
            functional=spec["fn_name"] is not None,
        )
        if status_name is None:
            frame({"fatal": f"test {i} could not be set up inside the sandbox"}, err=err[-2000:])
            return
        if status_name != "ok":
            out = b""
        elif spec["fn_name"] is not None:
            out = res
        header = {"i": i, "status": status_name, "exit": code, "signal": sig, "time_s": round(elapsed, 4)}
        frame(header, out[:limit], err[-2000:])
    frame({"done": True})


if __name__ == "__main__":
    main()
