"""Reasoning Gym task: the answer sits in `<answer>...</answer>`; the task's own `score_answer` grades it.

Each problem carries the Reasoning Gym `dataset_name` and the generator's `entry` (question, answer,
metadata) in `Problem.meta`; scorers need the entry, so it travels with the data as JSON. Partial
credit from a scorer is kept as is.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from functools import cache
from typing import Any

from rsa.tasks.base import Problem, Task

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LOCK = threading.Lock()

# Scorers that compare against tuple-valued metadata; JSON storage turns tuples into lists, so these
# fields are turned back into nested tuples before scoring.
_TUPLE_FIELDS = {"arc_agi": ("output",), "rearc": ("output",)}

logger = logging.getLogger(__name__)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def restore_entry(dataset_name: str, entry: dict) -> dict:
    """`entry` with JSON-flattened tuple fields restored for the scorers that need them (a copy if changed)."""
    fields = _TUPLE_FIELDS.get(dataset_name)
    if not fields or not isinstance(entry.get("metadata"), dict):
        return entry
    metadata = dict(entry["metadata"])
    for name in fields:
        if name in metadata:
            metadata[name] = _as_tuples(metadata[name])
    return {**entry, "metadata": metadata}


def last_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` in `text`, stripped; None when absent."""
    matches = _ANSWER.findall(text or "")
    return matches[-1].strip() if matches else None


@cache
def _scorer(dataset_name: str):
    import reasoning_gym

    with _LOCK:  # dataset construction touches module state in a few generators
        return reasoning_gym.get_score_answer_fn(dataset_name)


def load_entry(entry: Any, where: str) -> dict:
    """The Reasoning Gym entry as a dict, from a dict or its JSON text; ValueError naming `where` otherwise."""
    if isinstance(entry, dict):
        return entry
    if isinstance(entry, (str, bytes)):
        try:
            value = json.loads(entry)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field 'entry' is not valid JSON ({exc.msg} at char {exc.pos})") from None
        if isinstance(value, dict):
            return value
    raise ValueError(
        f"{where}: field 'entry' must be the task's entry object (or its JSON), got {type(entry).__name__}"
    )


class ReasoningGymTask(Task):
    """Reasoning Gym puzzles (games, cognition, arithmetic, ...) graded by each task's own scorer."""

    name = "rg"
    problem_kind = "reasoning problem"
    answer_format = "inside <answer></answer> tags"

    def extract(self, completion: str) -> str | None:
        """The last `<answer>` tag's content, or None."""
        return last_answer_tag(completion)

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """The Reasoning Gym task's `score_answer(extracted, entry)`, in [0, 1].

        Some task scorers parse the model's answer without guarding it (prime_factorization calls int() on
        it); such a parse error on the answer text means an unusable answer and scores 0 (logged at debug
        level). Bad entries are caught earlier, by `validate`.
        """
        if extracted is None:
            return 0.0
        name = problem.meta["dataset_name"]
        entry = restore_entry(name, load_entry(problem.meta.get("entry"), f"problem {problem.id}"))
        scorer = _scorer(name)
        try:
            score = scorer(extracted, entry)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError) as exc:
            logger.debug("%s scorer rejected answer %r of problem %s: %r", name, extracted[:80], problem.id, exc)
            return 0.0
        return float(score)

    def validate(self, problem: Problem, where: str) -> None:
        """Require `dataset_name` (a registered Reasoning Gym task) and a parseable `entry`."""
        import reasoning_gym.factory as factory

        name = problem.meta.get("dataset_name")
        if not name:
            raise ValueError(f"{where}: field 'dataset_name' is missing; Reasoning Gym rows need the task name")
        if name not in factory.DATASETS:
            raise ValueError(f"{where}: field 'dataset_name' = {name!r} is not a registered Reasoning Gym task")
        if problem.meta.get("entry") is None:
            raise ValueError(f"{where}: field 'entry' is missing; the Reasoning Gym scorer needs the task entry")
        load_entry(problem.meta["entry"], where)
