"""`rsa score --input F.jsonl --output G.jsonl`: grade existing generations with the task scorers.

    rsa score --input runs/x                                  # re-grade every member of a run; mean per step
    rsa score --input runs/x/population/step_003.jsonl --output regraded.jsonl

A run directory, or a population file inside one, is graded against the run's own problems (loaded again from
its manifest's dataset options and checked against the manifest's hash of them): each output line is the
population record with `extracted` and `score` from the current scorers, and `stored_score` (what the run
recorded). The mean score is printed per step; `--output` is optional there.

Each input line holds `task` (math, rg, mcq, code), `completion`, `answer` (gold) and the task's own
fields (`dataset_name` + `entry` for Reasoning Gym, `tests` for code). Each output line is the input
plus `extracted` and `score`. Bad lines (invalid UTF-8 or JSON, missing or wrong-typed fields) are reported by
their 1-based line number and skipped; the rest are graded. The output may not be the input file.
The output is written to a temporary file and renamed into place, so it is never half-written.
"""

from __future__ import annotations

import argparse
import contextlib
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


def score_file(input_path: Path, output_path: Path, scores: list[float] | None = None) -> tuple[int, list[str]]:
    """Grade every line of `input_path` into `output_path` atomically; returns (graded count, errors).

    Lines are read, graded and written one at a time (memory does not grow with the file), split on `\\n`
    only and decoded one by one (`rsa.jsonl`), so bad lines are named by their 1-based line number and
    skipped; each line's score is appended to `scores` when given. The output goes to a temporary file renamed
    into place at the end. ValueError before any work
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
            if scores is not None:
                scores.append(float(result["score"]))
    return graded, errors


def run_of(path: Path) -> Path | None:
    """The run directory `path` is (a folder with a manifest) or holds (a population file), else None."""
    from rsa.runs import MANIFEST, POPULATION_DIR

    if path.is_dir():
        return path if (path / MANIFEST).is_file() else None
    if path.parent.name == POPULATION_DIR and (path.parent.parent / MANIFEST).is_file():
        return path.parent.parent
    return None


def run_problems(run_dir: Path) -> list:
    """The run's problems, loaded again from its manifest's dataset options; ValueError when they cannot be loaded
    or are not the ones the run evaluated (the manifest's hash)."""
    from rsa.configs import read_manifest
    from rsa.data import load_problems
    from rsa.provenance import problems_digest
    from rsa.runs import MANIFEST

    manifest = read_manifest(run_dir / MANIFEST)
    config = manifest.get("config") or {}
    if not config.get("dataset"):
        raise ValueError(f"{run_dir / MANIFEST}: no config.dataset; the run's problems cannot be loaded again")
    problems = load_problems(
        config["dataset"],
        limit=config.get("limit"),
        task=config.get("task"),
        size=config.get("size"),
        seed=config.get("data_seed", 0),
    )
    expected = (manifest.get("problems") or {}).get("sha256")
    if expected and problems_digest(problems) != expected:
        raise ValueError(
            f"{run_dir}: --dataset {config['dataset']} now gives other problems than the run evaluated (their hash "
            "differs from the manifest's); re-grade from a copy of the dataset the run used"
        )
    return problems


def score_run(input_path: Path, output_path: Path | None) -> tuple[dict[int, list[float]], list[str]]:
    """Re-grade the population records of a run directory (every committed step) or of one of its population files
    with the current scorers; returns (step -> scores, errors). With `output_path`, the records with `extracted`,
    `score` and `stored_score` are written there atomically."""
    from rsa.jsonl import open_atomic
    from rsa.runs import POPULATION_DIR
    from rsa.sandbox import hide_from_programs

    run_dir = run_of(input_path)
    problems = run_problems(run_dir)
    files = (
        sorted((run_dir / POPULATION_DIR).glob("step_[0-9][0-9][0-9].jsonl")) if input_path.is_dir() else [input_path]
    )
    if output_path is not None and any(_same_file(f, output_path) for f in files if output_path.exists()):
        raise ValueError(f"--output {output_path} is an input file; grading writes a new file, so choose another")
    hide_from_programs(run_dir, *([output_path.parent] if output_path else []))
    scores: dict[int, list[float]] = {}
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_atomic(output_path)) if output_path is not None else None
        for path in files:
            for lineno, record in read_records(path, errors):
                where = f"{path}: line {lineno}"
                index = record.get("problem_index") if isinstance(record, dict) else None
                if (
                    not isinstance(index, int)
                    or not 0 <= index < len(problems)
                    or not isinstance(record.get("text"), str)
                ):
                    errors.append(f"{where}: not a population record of this run (problem_index, text)")
                    continue
                problem = problems[index]
                task = get_task(problem.task)
                extracted = task.extract(record["text"])
                score = float(task.score_extracted(extracted, problem))
                scores.setdefault(record.get("step", 0), []).append(score)
                if out is not None:
                    result = {**record, "stored_score": record.get("score"), "extracted": extracted, "score": score}
                    out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return scores, errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `score` subcommand."""
    p = sub.add_parser(
        "score", help="grade generations (JSONL, or a run folder / population file) and print the mean score"
    )
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        help="JSONL (task, completion, answer, task fields), or a run directory or one of its population files",
    )
    p.add_argument(
        "--output", type=Path, help="JSONL output (input + extracted + score); optional for a run's population"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Grade the input and print the mean score; exit 0 when every line was graded, 1 when some lines were bad."""
    if run_of(args.input) is not None:
        scores, errors = score_run(args.input, args.output)
        for message in errors:
            print(f"rsa score: {message}", file=sys.stderr)
        for step, values in sorted(scores.items()):
            print(f"step {step}: mean score {sum(values) / len(values):.4f} over {len(values)} members")
        every = [v for values in scores.values() for v in values]
        mean = sum(every) / len(every) if every else 0.0
        print(f"mean score {mean:.4f} over {len(every)} members" + (f" -> {args.output}" if args.output else ""))
        return 1 if errors else 0
    if args.output is None:
        raise ValueError("--output is required unless --input is a run directory or one of its population files")
    graded, errors = score_file(args.input, args.output, scores := [])
    for message in errors:
        print(f"rsa score: {message}", file=sys.stderr)
    total = graded + len(errors)
    mean = f"; mean score {sum(scores) / len(scores):.4f}" if scores else ""
    print(
        f"graded {graded}/{total} lines -> {args.output}{mean}"
        + (f"; {len(errors)} bad line(s) skipped" if errors else "")
    )
    return 1 if errors else 0
