"""Training rows: the one table of their columns, and the conversions between problems and rows.

A training row is one prompt of an RL dataset (docs/FORMATS.md). `COLUMNS` lists every column with its
type; the Arrow schema (`arrow_schema`, what `rsa augment` writes) and the `datasets.Features` (`features`,
what training casts mixed sources to) are derived from it. The scorer's view of a row (task, gold answer and
the task's fields) is read by `row_to_problem`, used alike by GRPO rewards, training validation, `rsa score`
and the problem loaders; `problem_to_row` writes it.

Structured fields (`entry`, `options`, `tests`) are stored as JSON text, so every file format and every
`datasets` schema holds them the same way; `row_to_problem` decodes them again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rsa.tasks import Problem, get_task
from rsa.types import Conversation

#: column types: how each one is stored in Arrow and in `datasets`
TYPES = ("messages", "string", "json", "int", "float", "bool", "int_list", "float_list")


@dataclass(frozen=True)
class Column:
    """One training-row column: its name, type (one of `TYPES`), whether training reads it, and its meaning."""

    name: str
    type: str
    core: bool
    meaning: str


COLUMNS: tuple[Column, ...] = (
    Column("prompt", "messages", True, "the plain prompt or the aggregation prompt (chat messages)"),
    Column("task", "string", True, "math, rg, mcq, code, ... (routes each row to its scorer)"),
    Column("answer", "string", True, "gold answer"),
    Column("dataset_name", "string", True, "Reasoning Gym task name"),
    Column("entry", "json", True, "Reasoning Gym entry (its scorer needs it)"),
    Column("options", "json", True, "multiple-choice options (a list, or a letter -> text mapping)"),
    Column("tests", "json", True, "code tests {inputs, outputs, fn_name}"),
    Column("kind", "string", True, "plain or aggregate"),
    Column("problem_id", "string", True, "id of the source problem"),
    Column("k", "int", False, "candidates in the prompt (0 for plain prompts)"),
    Column("candidate_ids", "int_list", False, "which of the problem's sampled candidates the prompt holds"),
    Column("candidate_scores", "float_list", False, "their scores"),
    Column("majority_correct", "bool", False, "whether the candidates' majority answer is right"),
    Column("mean_candidate_accuracy", "float", False, "mean of candidate_scores"),
    Column("reference_model", "string", False, "model that sampled the candidates"),
    Column("seed", "int", False, "sampling seed"),
    Column("set_class", "string", False, "easy, hard or all_wrong (AggLM class of the candidate set)"),
    Column("truncated_candidates", "int", False, "candidates shortened to fit the length budget"),
    Column("prompt_tokens", "int", False, "templated prompt tokens under the training tokenizer"),
)

#: the columns training reads; rows from several sources are cast to these
CORE_COLUMNS = tuple(c.name for c in COLUMNS if c.core)
#: the columns every training row must have
REQUIRED_COLUMNS = ("prompt", "task", "answer")
#: the columns that carry what a scorer needs beyond the gold answer (passed on as `Problem.meta`)
META_COLUMNS = ("dataset_name", "entry", "options", "tests")
_JSON_COLUMNS = tuple(c.name for c in COLUMNS if c.type == "json")
_BY_NAME = {c.name: c for c in COLUMNS}


def arrow_schema(names: Sequence[str] | None = None) -> Any:
    """The Arrow schema of training rows with the columns `names` (default: all of `COLUMNS`)."""
    import pyarrow as pa

    types = {
        "messages": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        "string": pa.string(),
        "json": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "int_list": pa.list_(pa.int64()),
        "float_list": pa.list_(pa.float64()),
    }
    return pa.schema([(name, types[_BY_NAME[name].type]) for name in names or [c.name for c in COLUMNS]])


def features(names: Sequence[str] = CORE_COLUMNS) -> Any:
    """The `datasets.Features` of training rows with the columns `names` (default: `CORE_COLUMNS`)."""
    from datasets import Features, List, Value

    string = Value("string")
    types = {
        "messages": List({"role": string, "content": string}),
        "string": string,
        "json": string,
        "int": Value("int64"),
        "float": Value("float64"),
        "bool": Value("bool"),
        "int_list": List(Value("int64")),
        "float_list": List(Value("float64")),
    }
    return Features({name: types[_BY_NAME[name].type] for name in names})


def _json_text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def problem_to_row(problem: Problem, prompt: Conversation | None = None, kind: str = "plain") -> dict:
    """The core columns of a training row for `problem`; `prompt` defaults to its task's plain prompt."""
    return {
        "prompt": get_task(problem.task).plain_prompt(problem) if prompt is None else prompt,
        "task": problem.task,
        "answer": None if problem.answer is None else str(problem.answer),
        "dataset_name": problem.meta.get("dataset_name"),
        **{name: _json_text(problem.meta.get(name)) for name in _JSON_COLUMNS},
        "kind": kind,
        "problem_id": str(problem.id),
    }


def decode_json_field(value: Any, where: str, field: str) -> Any:
    """`value` decoded when it is JSON text of an object or list, else unchanged; ValueError on bad JSON."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field '{field}' holds invalid JSON ({exc.msg})") from None
    return value


def gold_answer(value: Any, where: str, field: str = "answer") -> str | None:
    """The gold answer as text: text kept, a number written out, None kept; ValueError for any other type and for
    NaN or Infinity (JSON `NaN`, a NaN in a float column), which are no answer: written out, "nan" would score."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(
            f"{where}: field '{field}' is {value} (JSON NaN/Infinity), which is not an answer; give the gold answer "
            "as text or a finite number"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: field '{field}' must be text or a number, got {type(value).__name__}")


def row_to_problem(
    row: Mapping[str, Any],
    where: str,
    *,
    default_id: str | None = None,
    question: str = "",
    meta_fields: Iterable[str] = META_COLUMNS,
    validate: bool = True,
) -> Problem:
    """The Problem a row describes for its scorer: `task`, gold `answer` and the task's fields.

    `meta_fields` are the row's fields passed on as `Problem.meta` (null values skipped, JSON text of
    `entry`/`options`/`tests` decoded). With `validate` the task checks the problem has what its scorer
    needs. Errors are ValueErrors naming `where` and the field.
    """
    task_name = row.get("task")
    if not task_name:
        raise ValueError(f"{where}: field 'task' is missing or empty; each row needs its task (math, rg, mcq, ...)")
    if not isinstance(task_name, str):
        raise ValueError(f"{where}: field 'task' must be text, got {type(task_name).__name__}")
    try:
        task = get_task(task_name)
    except ValueError as exc:
        raise ValueError(f"{where}: field 'task': {exc}") from None
    meta = {}
    for name in meta_fields:
        value = row.get(name)
        if value is not None:
            meta[name] = decode_json_field(value, where, name) if name in _JSON_COLUMNS else value
    pid = row.get("id") if row.get("id") is not None else row.get("problem_id")
    problem = Problem(
        id=str(pid) if pid is not None else (default_id or where),
        task=task.name,
        question=question,
        answer=gold_answer(row.get("answer"), where),
        meta=meta,
    )
    if validate:
        task.validate(problem, where)
    return problem
