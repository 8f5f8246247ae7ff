"""`rsa show RUN_DIR --problem P`: one problem's trajectory through a run, step by step.

    rsa show runs/aime25-rsa --problem 3                 # by index in problems.jsonl (0-based), or by id
    rsa show runs/aime25-rsa --problem aime25-07 --step 2 --full

prints the question and gold answer, then for each committed step every member: its slot, extracted answer,
score, the slots of the previous step it aggregated (parents), tokens, an error when its request failed, and
the start of its text (`--full`: all of it, and its prompt when the run logged prompts with --log_prompts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: characters of each member's text shown without --full
PREVIEW_CHARS = 160


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `show` subcommand."""
    p = sub.add_parser("show", help="one problem's trajectory in a run: each step's members, answers, scores, parents")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory written by `rsa eval`")
    p.add_argument("--problem", required=True, help="problem index (0-based, as in problems.jsonl) or id")
    p.add_argument("--step", type=int, action="append", help="only this step (repeatable; default: every step)")
    p.add_argument("--full", action="store_true", help="whole texts (and prompts, when logged), not their start")
    p.set_defaults(func=run)


def find_problem(run_dir: Path, problem: str) -> tuple[int, dict]:
    """(index, record) of `problem` (an index or an id) in the run's problems.jsonl; ValueError otherwise."""
    from rsa.jsonl import read_records
    from rsa.runs import MANIFEST, PROBLEMS

    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {MANIFEST})")
    problems = [record for _, record in read_records(run_dir / PROBLEMS)]
    for index, record in enumerate(problems):
        if record.get("id") == problem:
            return index, record
    if problem.isdigit() and int(problem) < len(problems):
        return int(problem), problems[int(problem)]
    ids = ", ".join(str(p.get("id")) for p in problems[:5])
    raise ValueError(
        f"--problem {problem}: no such problem in {run_dir} ({len(problems)} problems: index 0..{len(problems) - 1}, "
        f"or an id such as {ids})"
    )


def trajectory(run_dir: Path, index: int, steps: list[int] | None = None) -> dict[int, list[dict]]:
    """Step -> the population records of problem `index` at that step (slot order), for the committed steps."""
    from rsa.jsonl import read_records
    from rsa.runs import POPULATION_DIR

    found: dict[int, list[dict]] = {}
    for path in sorted((run_dir / POPULATION_DIR).glob("step_[0-9][0-9][0-9].jsonl")):
        step = int(path.stem.split("_")[1])
        if steps and step not in steps:
            continue
        members = [r for _, r in read_records(path) if r.get("problem_index") == index]
        found[step] = sorted(members, key=lambda r: r.get("slot", 0))
    return found


def _text(text: str | None, full: bool) -> str:
    text = (text or "").strip()
    if full or len(text) <= PREVIEW_CHARS:
        return text
    return text[:PREVIEW_CHARS].replace("\n", " ") + " ..."


def format_trajectory(record: dict, index: int, steps: dict[int, list[dict]], full: bool = False) -> str:
    """The text `rsa show` prints."""
    lines = [
        f"problem {index} ({record.get('id')}), task {record.get('task')}",
        f"question: {_text(record.get('question'), full)}",
        f"gold: {record.get('answer')}",
    ]
    if not steps:
        lines.append("no committed step holds this problem yet")
    for step, members in steps.items():
        scores = [m.get("score") or 0.0 for m in members]
        mean = sum(scores) / len(scores) if scores else 0.0
        lines.append(f"\n== step {step}: {len(members)} members, mean score {mean:.3f}")
        for m in members:
            parents = ",".join(map(str, m.get("parents") or [])) or "-"
            status = f"  ERROR {m['error']}" if m.get("error") else ""
            lines.append(
                f"  [{m.get('slot')}] answer {m.get('extracted')!r}  score {m.get('score')}  parents {parents}  "
                f"tokens {m.get('num_tokens')}{status}"
            )
            lines.append(f"      {_text(m.get('text'), full)}")
            if full and m.get("prompt") is not None:
                lines.append(f"      prompt: {json.dumps(m['prompt'], ensure_ascii=False)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the trajectory of `args.problem` in `args.run`."""
    index, record = find_problem(args.run, args.problem)
    print(format_trajectory(record, index, trajectory(args.run, index, args.step), args.full))
    return 0
