"""Exact JSONL reading: one JSON value per line, lines split on `\\n` only, each line decoded on its own.

`str.splitlines()` also splits on U+2028, U+0085 and other characters that are legal inside JSON strings
(and that the project itself writes with `ensure_ascii=False`), so it would cut one record in two and
shift every later line number. Decoding per line lets invalid UTF-8 be reported with its line number
instead of rejecting the whole file. Line numbers are 1-based in every message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
