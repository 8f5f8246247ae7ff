"""Loading problems: verl parquet, JSONL, Hugging Face datasets, and Reasoning Gym procedural generation.

On the command line a dataset is named by a spec:
  path/to/file.parquet | .jsonl | .json   a local file (verl layout or flat rows)
  aime25, hmmt25, rg-games, ...           a built-in benchmark (see `BENCHMARKS`)
  hf:<repo-or-local-dir>[:<split>]        a Hugging Face dataset (hub when online, local path offline)
  rg:<task>[+<task>...]                   Reasoning Gym, generated offline (size and seed options)

Two row layouts are accepted:
  verl:  `prompt` (chat messages), `reward_model.ground_truth`, `data_source`, `ability`,
         `extra_info` (Reasoning Gym: `dataset_name`, `entry`)
  flat:  `question` (or `problem`; a string), `answer`, optional `task`, `id`, and task fields
         (`dataset_name`/`entry` for Reasoning Gym, `options` for multiple choice, `tests` for code)
Every row is validated up front; a malformed row raises ValueError naming the file, row and field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsa import rows
from rsa.jsonl import read_records
from rsa.rows import META_COLUMNS, decode_json_field, gold_answer
from rsa.tasks import Problem, get_task

logger = logging.getLogger(__name__)

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
RG_INSTRUCTION = "Reason step by step, then give your final answer inside <answer></answer> tags."
MCQ_INSTRUCTION = "Reason step by step, then give the letter of the correct option in \\boxed{}."


@dataclass(frozen=True)
class Benchmark:
    """A built-in benchmark: a hub dataset (or Reasoning Gym mix) and how to read it."""

    name: str
    hub: str | None  # Hugging Face dataset repository, or None for procedural sets
    split: str = "train"
    rg_tasks: tuple[str, ...] = ()
    size: int = 100
    task: str | None = None


RG_GAMES = (
    "futoshiki", "kakurasu", "maze", "knight_swap", "tsumego", "rush_hour", "tower_of_hanoi", "sokoban",
    "mini_sudoku", "n_queens", "puzzle24", "countdown", "boxnet", "mahjong_puzzle", "survo", "jugs", "sudoku",
)  # fmt: skip
RG_COGNITION = (
    "number_sequence", "figlet_font", "arc_1d", "needle_haystack", "rubiks_cube", "color_cube_rotation",
    "modulo_grid", "rectangle_count", "arc_agi",
)  # fmt: skip

BENCHMARKS: dict[str, Benchmark] = {
    "aime25": Benchmark("aime25", "math-ai/aime25", "test", task="math"),
    "hmmt25": Benchmark("hmmt25", "MathArena/hmmt_feb_2025", "train", task="math"),
    "supergpqa": Benchmark("supergpqa", "m-a-p/SuperGPQA", "train", task="mcq"),
    "rg-games": Benchmark("rg-games", None, rg_tasks=RG_GAMES, size=100, task="rg"),
    "rg-cognition": Benchmark("rg-cognition", None, rg_tasks=RG_COGNITION, size=100, task="rg"),
}


def dataset_lines() -> list[str]:
    """One line per built-in benchmark (`BENCHMARKS`): name, task, and where its problems come from."""
    lines = []
    width = max(len(name) for name in BENCHMARKS)
    for name, bench in BENCHMARKS.items():
        if bench.rg_tasks:
            source = (
                f"Reasoning Gym, generated offline ({bench.size} problems by default) from {len(bench.rg_tasks)} "
                f"tasks: {', '.join(bench.rg_tasks)}"
            )
        else:
            source = f"Hugging Face dataset {bench.hub}, split {bench.split} (needs the Hub or its cache)"
        lines.append(f"{name:<{width}}  task {bench.task or '-':<4}  {source}")
    return lines


def reasoning_gym_tasks() -> list[str]:
    """The task names `rg:<task>` accepts: Reasoning Gym's dataset registry, sorted."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def format_question(task: str, text: str, options: Any = None) -> str:
    """The plain-prompt text for a bare question: options listed (multiple choice) and the answer format."""
    text = text.strip()
    if task == "mcq" and options:
        if isinstance(options, Mapping):
            lines = [f"{k}. {v}" for k, v in options.items()]
        else:
            lines = [f"{'ABCDEFGHIJ'[i]}. {opt}" for i, opt in enumerate(options)]
        text = text + "\n\n" + "\n".join(lines)
    instruction = {"math": MATH_INSTRUCTION, "rg": RG_INSTRUCTION, "mcq": MCQ_INSTRUCTION}.get(task)
    if instruction and "\\boxed" not in text and "<answer>" not in text:
        text = f"{text}\n\n{instruction}"
    return text


def _question_from_prompt(prompt: Any, where: str) -> str:
    prompt = decode_json_field(prompt, where, "prompt")
    if isinstance(prompt, str):
        return prompt
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: field 'prompt' must be a non-empty list of chat messages or a string")
    users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise ValueError(f"{where}: field 'prompt' has no user message with text 'content'")
    return users[-1]["content"]


def _infer_task(row: Mapping, extra: Mapping) -> str:
    if extra.get("dataset_name") and extra.get("entry") is not None:
        return "rg"
    if row.get("dataset_name") and row.get("entry") is not None:
        return "rg"
    if row.get("tests") is not None or row.get("public_test_cases") is not None:
        return "code"
    source = f"{row.get('data_source', '')} {row.get('ability', '')}".lower()
    if "gpqa" in source or "choice" in source or row.get("options") is not None:
        return "mcq"
    if "code" in source:
        return "code"
    return "math"


def row_to_problem(row: Mapping[str, Any], where: str, default_id: str, task: str | None = None) -> Problem:
    """Convert one dataset row (verl or flat layout) to a validated Problem; ValueError names `where`."""
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: row must be an object, got {type(row).__name__}")
    extra = decode_json_field(row.get("extra_info") or {}, where, "extra_info")
    if not isinstance(extra, Mapping):
        raise ValueError(f"{where}: field 'extra_info' must be an object")
    task_name = task or row.get("task") or extra.get("task") or _infer_task(row, extra)
    try:
        task_name = get_task(str(task_name)).name
    except ValueError as exc:
        raise ValueError(f"{where}: field 'task': {exc}") from None

    # the scorer's fields, from extra_info and then the row itself (the row wins)
    flat: dict[str, Any] = {"task": task_name}
    for key in (*META_COLUMNS, "data_source"):
        for source in (extra, row):
            if key in source and source[key] is not None:
                flat[key] = source[key]
    if "options" in flat:
        flat["options"] = decode_json_field(flat["options"], where, "options")

    if "prompt" in row and row["prompt"] is not None:
        question = raw = _question_from_prompt(row["prompt"], where)
    elif isinstance(row.get("question"), str) or isinstance(row.get("problem"), str):
        raw = row.get("question") if isinstance(row.get("question"), str) else row["problem"]
        question = format_question(task_name, raw, flat.get("options"))
    else:
        raise ValueError(f"{where}: no question: expected field 'prompt' (chat messages) or 'question' (text)")
    if not raw.strip():
        raise ValueError(f"{where}: the question is empty; every problem needs its question text")

    reward_model = decode_json_field(row.get("reward_model") or {}, where, "reward_model")
    # SuperGPQA keeps the option text in `answer` and the letter in `answer_letter`
    answer_field = "answer_letter" if row.get("answer_letter") is not None else "answer"
    flat["answer"] = gold_answer(row.get(answer_field), where, answer_field)
    if flat["answer"] is None and isinstance(reward_model, Mapping):
        flat["answer"] = gold_answer(reward_model.get("ground_truth"), where, "reward_model.ground_truth")
    pid = row.get("id") or extra.get("id") or extra.get("index")
    flat["id"] = str(pid) if pid is not None else default_id
    return rows.row_to_problem(flat, where, question=question, meta_fields=(*META_COLUMNS, "data_source"))


def _unique(problem: Problem, where: str, seen: dict[str, str]) -> Problem:
    """`problem`, once its id is known to be new in `seen` (id -> where it was first); ValueError otherwise."""
    if problem.id in seen:
        raise ValueError(
            f"{where}: duplicate problem id {problem.id!r} (first at {seen[problem.id]}); every problem needs its own "
            "id (results are recorded by id)"
        )
    seen[problem.id] = where
    return problem


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from read_records(path)  # split on "\n" only; bad UTF-8 or JSON named by line
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json dataset must hold a list of rows")
        yield from enumerate(data, 1)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), 1)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .parquet, .jsonl or .json")


def load_file(path: str | Path, task: str | None = None, limit: int | None = None) -> list[Problem]:
    """Problems from a local parquet/JSONL/JSON file; every row validated (errors name file and row)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    unit = "line" if path.suffix.lower() == ".jsonl" else "row"
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for number, row in _read_rows(path):
        where = f"{path}: {unit} {number}"
        problems.append(_unique(row_to_problem(row, where, f"{path.stem}-{number}", task), where, seen))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"{path}: no rows")
    return problems


def load_rows(rows: Iterable[Mapping[str, Any]], source: str, task: str | None = None) -> list[Problem]:
    """Problems from in-memory rows (e.g. a `datasets.Dataset`); errors name `source` and the row."""
    seen: dict[str, str] = {}
    return [
        _unique(row_to_problem(row, f"{source}: row {i}", f"{source}-{i}", task), f"{source}: row {i}", seen)
        for i, row in enumerate(rows, 1)
    ]


def load_hf(name: str, split: str = "train", task: str | None = None, limit: int | None = None) -> list[Problem]:
    """Problems from a Hugging Face dataset: a local directory or saved dataset offline, the hub online."""
    import datasets

    local = Path(name)
    if local.exists():
        try:
            data = datasets.load_from_disk(str(local))
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        except FileNotFoundError:
            data = datasets.load_dataset(str(local), split=split)
    else:
        try:
            data = datasets.load_dataset(name, split=split)
        except Exception as exc:  # hub errors come in many types; report them as one clear input error
            raise ValueError(
                f"could not load Hugging Face dataset {name!r} (split {split!r}): {exc}. "
                "Offline? Download it once and pass its local path instead (hf:/path/to/dir)."
            ) from exc
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return load_rows(data, f"hf:{name}", task)


def _did_you_mean(name: str, known) -> str:
    """` (did you mean X?)` for the closest of `known` to a mistyped `name`, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def generate_reasoning_gym(tasks: Iterable[str], size: int, seed: int = 0) -> list[Problem]:
    """`size` Reasoning Gym problems spread evenly over `tasks`, generated offline from `seed`."""
    import reasoning_gym
    import reasoning_gym.factory as factory

    names = list(tasks)
    unknown = [n for n in names if n not in factory.DATASETS]
    if unknown:
        hints = "".join(_did_you_mean(n, factory.DATASETS) for n in unknown)
        raise ValueError(f"unknown Reasoning Gym task(s) {unknown}{hints}; see reasoning_gym.factory.DATASETS")
    if size < 1:
        raise ValueError(f"Reasoning Gym size must be >= 1, got {size}")
    per_task = [size // len(names) + (1 if i < size % len(names) else 0) for i in range(len(names))]
    problems = []
    for name, count in zip(names, per_task):
        if count == 0:
            continue
        dataset = reasoning_gym.create_dataset(name, size=count, seed=seed)
        for index in range(count):
            entry = json.loads(json.dumps(dataset[index], default=str))
            problems.append(
                Problem(
                    id=f"rg-{name}-{seed}-{index}",
                    task="rg",
                    question=format_question("rg", entry["question"]),
                    answer=str(entry["answer"]) if entry.get("answer") is not None else None,
                    meta={"dataset_name": name, "entry": entry},
                )
            )
    # interleave tasks so that a --limit keeps the mix
    order = sorted(range(len(problems)), key=lambda i: int(problems[i].id.rsplit("-", 1)[1]))
    return [problems[i] for i in order]


def load_problems(
    spec: str, *, limit: int | None = None, task: str | None = None, size: int | None = None, seed: int = 0
) -> list[Problem]:
    """Problems named by a dataset spec (see the module docstring); `limit` keeps the first L."""
    if spec.startswith("rg:"):
        names = [n for n in spec[3:].split("+") if n]
        if not names:
            raise ValueError("dataset spec 'rg:' needs at least one task name, e.g. rg:basic_arithmetic")
        problems = generate_reasoning_gym(names, size or limit or 100, seed)
    elif spec.startswith("hf:"):
        repo, _, split = spec[3:].partition(":")
        if repo.count(":"):
            repo, split = repo.rsplit(":", 1)
        problems = load_hf(repo, split or "train", task, limit)
    elif spec in BENCHMARKS:
        bench = BENCHMARKS[spec]
        if bench.rg_tasks:
            problems = generate_reasoning_gym(bench.rg_tasks, size or bench.size, seed)
        else:
            problems = load_hf(bench.hub, bench.split, task or bench.task, limit)
    elif Path(spec).suffix.lower() in (".parquet", ".jsonl", ".json") or Path(spec).exists():
        problems = load_file(spec, task, limit)
    else:
        raise ValueError(
            f"unknown dataset {spec!r}{_did_you_mean(spec, BENCHMARKS)}: give a .parquet/.jsonl/.json path, a built-in name "
            f"({', '.join(BENCHMARKS)}), hf:<repo>[:<split>], or rg:<task>[+<task>...]"
        )
    return problems[:limit] if limit is not None else problems
