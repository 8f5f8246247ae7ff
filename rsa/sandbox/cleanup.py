"""Run folders on the host (host side): their names, and their removal, including those of killed graders.

Each run writes the program, the spec and the test inputs (never the expected outputs) into a fresh host folder
named after the grading process, holds an flock on it while it runs, and removes it at the end (`_force_remove`).
A grader killed with -9 cannot; `clean_leftovers` (called by every new `Sandbox`) removes such folders, and only
those whose owner is dead and whose lock is free, never a live grader's. Names with a leading underscore are
internal to `rsa.sandbox`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from functools import partial

from rsa.sandbox.isolation import UID_BASE, UID_COUNT

logger = logging.getLogger(__name__)


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
