"""`rsa score --input F.jsonl --output G.jsonl`: grade existing generations with the task scorers.

Each input line holds `task` (math, rg, mcq, code), `completion`, `answer` (gold) and the task's own
fields (`dataset_name` + `entry` for Reasoning Gym, `tests` for code). Each output line is the input
plus `extracted` and `score`. Bad lines (invalid UTF-8 or JSON, missing or wrong-typed fields) are reported by
their 1-based line number and skipped; the rest are graded. The output may not be the input file.
The output is written to a temporary file and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rsa.jsonl import read_records
from rsa.rows import row_to_problem
from rsa.tasks import get_task

logger = logging.getLogger(__name__)

_RESERVED = ("task", "completion", "answer", "id")


def grade_line(record: Any, where: str) -> dict:
    """Grade one input record; returns it with `extracted` and `score`. ValueError names `where` and field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("task", "completion"):
        if field not in record:
            raise ValueError(f"{where}: field {field!r} is missing")
    if not isinstance(record["completion"], str):
        raise ValueError(f"{where}: field 'completion' must be a string, got {type(record['completion']).__name__}")
    meta_fields = [k for k in record if k not in _RESERVED]
    problem = row_to_problem(record, where, default_id=where, meta_fields=meta_fields)
    task = get_task(problem.task)
    extracted = task.extract(record["completion"])
    return {**record, "extracted": extracted, "score": task.score_extracted(extracted, problem)}


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def score_file(input_path: Path, output_path: Path) -> tuple[int, list[str]]:
    """Grade every line of `input_path` into `output_path` atomically; returns (graded count, errors).

    Lines are read, graded and written one at a time (memory does not grow with the file), split on `\\n`
    only and decoded one by one (`rsa.jsonl`), so bad lines are named by their 1-based line number and
    skipped. The output goes to a temporary file renamed into place at the end. ValueError before any work
    when the output would overwrite the input. Both files are kept out of sight of sandboxed programs.
    """
    from rsa.jsonl import open_atomic
    from rsa.sandbox import hide_from_programs

    if not input_path.exists():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    if _same_file(input_path, output_path):
        raise ValueError(
            f"--output {output_path} is the input file; grading writes a new file, so choose another --output"
        )
    # the input holds every problem's expected outputs and the output (and its temporary file) gains them too
    hide_from_programs(input_path, output_path, input_path.parent, output_path.parent)
    errors: list[str] = []
    graded = 0
    with open_atomic(output_path) as out:
        records = read_records(input_path, errors)
        for lineno, record in tqdm(records, desc="scoring", unit="line", disable=None, mininterval=2.0):
            where = f"{input_path}: line {lineno}"
            try:
                result = grade_line(record, where)
                # JSON has no NaN or Infinity: refuse to write Python's bare tokens for them
                line = json.dumps(result, ensure_ascii=False, allow_nan=False)
            except ValueError as exc:
                message = str(exc)
                if "JSON compliant" in message:
                    message = f"{where}: holds NaN or Infinity, which JSON does not allow; write the value as a string"
                errors.append(message)
                continue
            out.write(line + "\n")
            graded += 1
    return graded, errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `score` subcommand."""
    p = sub.add_parser("score", help="grade existing generations (JSONL in, JSONL out with extracted + score)")
    p.add_argument("--input", required=True, type=Path, help="JSONL: task, completion, answer, task fields")
    p.add_argument("--output", required=True, type=Path, help="JSONL output (input + extracted + score)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Grade the file; exit 0 when every line was graded, 1 when some lines were bad."""
    graded, errors = score_file(args.input, args.output)
    for message in errors:
        print(f"rsa score: {message}", file=sys.stderr)
    total = graded + len(errors)
    print(
        f"graded {graded}/{total} lines -> {args.output}" + (f"; {len(errors)} bad line(s) skipped" if errors else "")
    )
    return 1 if errors else 0
