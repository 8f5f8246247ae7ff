"""`rsa score --input F.jsonl --output G.jsonl`: grade existing generations with the task scorers.

Each input line holds `task` (math, rg, mcq, code), `completion`, `answer` (gold) and the task's own
fields (`dataset_name` + `entry` for Reasoning Gym, `tests` for code). Each output line is the input
plus `extracted` and `score`. Bad lines are reported by line number and skipped; the rest are graded.
The output is written to a temporary file and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rsa.tasks import Problem, get_task

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
        raise ValueError(f"{where}: field 'completion' must be a string")
    try:
        task = get_task(str(record["task"]))
    except ValueError as exc:
        raise ValueError(f"{where}: field 'task': {exc}") from None
    answer = record.get("answer")
    meta = {k: v for k, v in record.items() if k not in _RESERVED}
    if isinstance(meta.get("entry"), str):
        from rsa.tasks.reasoning_gym import load_entry

        meta["entry"] = load_entry(meta["entry"], where)
    problem = Problem(
        id=str(record.get("id", where)),
        task=task.name,
        question="",
        answer=None if answer is None else str(answer),
        meta=meta,
    )
    task.validate(problem, where)
    extracted = task.extract(record["completion"])
    return {**record, "extracted": extracted, "score": task.score_extracted(extracted, problem)}


def score_file(input_path: Path, output_path: Path) -> tuple[int, list[str]]:
    """Grade every line of `input_path` into `output_path` atomically; returns (graded count, errors)."""
    from rsa.runs import write_text_atomic

    if not input_path.exists():
        raise FileNotFoundError(f"input file {input_path} does not exist")
    errors: list[str] = []
    graded: list[str] = []
    lines = input_path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(tqdm(lines, desc="scoring", unit="line", disable=len(lines) < 200), 1):
        if not line.strip():
            continue
        where = f"{input_path}: line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            result = grade_line(record, where)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        graded.append(json.dumps(result, ensure_ascii=False) + "\n")
    write_text_atomic(output_path, "".join(graded))
    return len(graded), errors


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
