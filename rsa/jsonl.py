"""JSONL and atomic files: the one reader and the one writer of every record the project keeps.

Reading: one JSON value per line, lines split on `\\n` only, each line decoded on its own.
`str.splitlines()` also splits on U+2028, U+0085 and other characters that are legal inside JSON strings
(and that the project itself writes with `ensure_ascii=False`), so it would cut one record in two and
shift every later line number. Decoding per line lets invalid UTF-8 be reported with its line number
instead of rejecting the whole file. Line numbers are 1-based in every message. Append-only files
(`read_jsonl_lines`) may end in a torn line, cut off by `cut_torn_tail`.

Writing: a file is written whole through a temporary file next to it, fsynced and renamed into place
(`open_atomic` and the `write_*_atomic` helpers), so it is never half-written; `append_jsonl` appends one
fsynced line. A full disk raises an OSError that names the file being written (`DISK_FULL`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

#: errno values of a full disk (or a full quota): the error then names the file being written
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# ----- reading ------------------------------------------------------------------------------------------------
def parse_line(raw: bytes, where: str) -> Any | None:
    """The JSON value of one raw line (None for a blank line); ValueError naming `where` otherwise."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{where}: invalid UTF-8 (byte {exc.start + 1} of the line); re-encode the file as UTF-8"
        ) from None
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def read_records(path: str | Path, errors: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of the JSONL file at `path`, streamed.

    A bad line (invalid UTF-8 or JSON) raises ValueError naming the file and line; when `errors` is a
    list, its message is appended there instead and the line is skipped.
    """
    with open(path, "rb") as fh:  # binary iteration splits on b"\n" only
        for lineno, raw in enumerate(fh, 1):
            try:
                value = parse_line(raw, f"{path}: line {lineno}")
            except ValueError as exc:
                if errors is None:
                    raise
                errors.append(str(exc))
                continue
            if value is not None:
                yield lineno, value


def read_jsonl(path: str | Path) -> list[Any]:
    """Every value of the JSONL file at `path`, in order; ValueError naming the file and line of a bad one."""
    return [value for _, value in read_records(path)]


def read_jsonl_lines(path: str | Path, *, what: str = "record") -> tuple[list[dict], int]:
    """Records of an append-only JSONL file and the byte length of its complete lines.

    A last line without its newline is torn (a kill came mid-append): it is left out, and the caller
    decides whether to cut it off (`cut_torn_tail`). Any other line that is not a JSON object, a blank
    one included, raises ValueError naming the file and line; nothing is ever dropped silently.
    """
    data = Path(path).read_bytes()
    records, good = [], 0
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines[:-1], 1):  # the part after the last newline is the torn tail
        try:
            record = parse_line(raw, f"{path}: line {lineno}: corrupt {what}")
        except ValueError as exc:
            raise ValueError(f"{exc}; committed records are never deleted: fix or remove that line by hand") from None
        if not isinstance(record, dict):
            found = "a blank line" if record is None else type(record).__name__
            raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {found}")
        records.append(record)
        good += len(raw) + 1
    return records, good


def cut_torn_tail(path: Path, good: int) -> None:
    """Cut `path` to its first `good` bytes (a torn last line, see `read_jsonl_lines`), saying so."""
    size = path.stat().st_size
    if size > good:
        logger.warning(
            "%s: dropping a torn last line (%d bytes without a newline: the run was killed while appending it)",
            path,
            size - good,
        )
        with open(path, "r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())


# ----- writing ------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(exc: BaseException, path: Path) -> BaseException:
    """A disk-full OSError that names `path` (a failed write() names no file); any other error unchanged."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL and not exc.filename:
        named = OSError(exc.errno, exc.strerror, str(path))
        named.__cause__ = exc
        return named
    return exc


def current_umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status) where possible."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(umask)
    return umask


@contextlib.contextmanager
def open_atomic(path: Path) -> Iterator[TextIO]:
    """A text file to write `path` through: a temporary file next to it, fsynced and renamed into place when
    the block ends without an exception (removed otherwise), so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a run's files follow the umask like any other file the user writes
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file, fsync and rename: never half-written."""
    with open_atomic(path) as fh:
        fh.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, records: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line to `path`, flushed and fsynced before returning (a full disk names `path`)."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        named = _naming(exc, path)
        if named is exc:
            raise
        raise named from exc
