"""TRL-signature reward functions built from the task scorers (one scorer for evaluation and training).

A reward function is called by TRL's GRPOTrainer as `fn(prompts=..., completions=..., **columns)`, where
every other dataset column arrives as a keyword list with one value per completion. Completions are
strings (standard datasets) or lists of chat messages (conversational datasets). Each row is routed
to its own task through the `task` column, so one batch can mix math, Reasoning Gym and multiple
choice. A row the reward does not apply to gets None (TRL ignores it); a scorer error is raised, never
turned into a silent 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rsa.rows import META_COLUMNS, row_to_problem
from rsa.tasks import CORRECT_SCORE, Problem, get_task

RewardFn = Callable[..., list[float | None]]

# `META_COLUMNS` (rsa.rows) carry what scorers need; every other column in kwargs is ignored.


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or the content of the last assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            if isinstance(content, list):  # multimodal-style content parts
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    if isinstance(completion, Sequence) and not completion:
        return ""
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def _column(kwargs: dict, name: str, n: int) -> list:
    value = kwargs.get(name)
    if value is None:
        return [None] * n
    if len(value) != n:
        raise ValueError(f"reward column {name!r} has {len(value)} values for {n} completions")
    return list(value)


def _problems(n: int, kwargs: dict) -> list[Problem | None]:
    columns = {name: _column(kwargs, name, n) for name in ("task", "answer", *META_COLUMNS)}
    problems: list[Problem | None] = []
    for i in range(n):
        row = {name: values[i] for name, values in columns.items()}
        if row["task"] is None:
            problems.append(None)
            continue
        problems.append(row_to_problem(row, f"reward row {i + 1}", default_id=str(i), validate=False))
    return problems


def make_reward(tasks: Sequence[str] | None = None, name: str | None = None, partial: bool = True) -> RewardFn:
    """A reward function scoring rows whose `task` column is in `tasks` (all tasks when None).

    Rows of other tasks get None. `partial=False` rounds partial credit down to 0/1 (scores < 1 -> 0).
    The function's `__name__` (TRL's log key) is `name` or `reward_<task>[_<task>...]`.
    """
    wanted = {get_task(t).name for t in tasks} if tasks else None

    def reward(prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list[float | None]:
        if completions is None:
            raise ValueError("reward called without completions")
        n = len(completions)
        if "task" not in kwargs:
            raise ValueError("reward needs a 'task' dataset column (math, rg, mcq, code) to route each row")
        out: list[float | None] = []
        for completion, problem in zip(completions, _problems(n, kwargs)):
            if problem is None or (wanted is not None and get_task(problem.task).name not in wanted):
                out.append(None)
                continue
            score = get_task(problem.task).score(completion_text(completion), problem)
            out.append(score if partial or score >= CORRECT_SCORE else 0.0)
        return out

    reward.__name__ = name or ("reward_" + "_".join(sorted(wanted)) if wanted else "reward_task")
    reward.__qualname__ = reward.__name__
    return reward


reward_task = make_reward(name="reward_task")
reward_math = make_reward(["math"], name="reward_math")
reward_rg = make_reward(["rg"], name="reward_rg")
reward_mcq = make_reward(["mcq"], name="reward_mcq")

REWARDS: dict[str, RewardFn] = {
    "task": reward_task,
    "math": reward_math,
    "rg": reward_rg,
    "mcq": reward_mcq,
}


def get_reward(name: str) -> RewardFn:
    """A reward function by registry name (`task`, `math`, `rg`, `mcq`, or any task name)."""
    if name in REWARDS:
        return REWARDS[name]
    get_task(name)  # raises a clear error for unknown names
    REWARDS[name] = make_reward([name], name=f"reward_{name}")
    return REWARDS[name]
