"""Toy task for the CPU toy world: multi-term addition with written partial sums.

A problem is "Add: 12+34+51+77"; a solution writes one partial sum per line and boxes the total:

    12+34=46
    46+51=97
    97+77=174
    \\boxed{174}

Independent samples of an imperfect model slip on different partial sums, so a population holds
different wrong totals and the right one more often than any single wrong one: the situation where
aggregation helps. The prompts are compact (a ~1M-parameter model reads them), but keep the paper's
structure: the question, numbered candidates, and an instruction to write one improved solution.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rsa.tasks.base import Problem
from rsa.tasks.math import MathTask, last_boxed


@dataclass(frozen=True)
class ToySpec:
    """Problem family: `terms` numbers of up to `digits` digits each."""

    terms: int = 4
    digits: int = 1


def make_problem(rng: random.Random, spec: ToySpec, index: int, prefix: str = "toy") -> Problem:
    """One random toy problem; the gold answer is the exact sum."""
    high = 10**spec.digits - 1
    numbers = [rng.randint(1, high) for _ in range(spec.terms)]
    question = "Add: " + "+".join(map(str, numbers))
    return Problem(
        id=f"{prefix}-{index}", task="toy", question=question, answer=str(sum(numbers)), meta={"numbers": numbers}
    )


def generate_problems(n: int, seed: int, spec: ToySpec | None = None, prefix: str = "toy") -> list[Problem]:
    """`n` toy problems from `seed` (deterministic)."""
    rng = random.Random(seed)
    spec = spec or ToySpec()
    return [make_problem(rng, spec, i, prefix) for i in range(n)]


def numbers_of(problem: Problem) -> list[int]:
    """The addends of a toy problem, read from its question text."""
    return [int(x) for x in problem.question.split(":", 1)[1].strip().split("+")]


def solution(numbers: Sequence[int], slips: dict[int, int] | None = None) -> str:
    """A written solution; `slips` maps a line index to an error added to that partial sum (propagated)."""
    slips = slips or {}
    lines, total = [], numbers[0]
    for i, x in enumerate(numbers[1:]):
        new = total + x + slips.get(i, 0)
        lines.append(f"{total}+{x}={new}")
        total = new
    lines.append(f"\\boxed{{{total}}}")
    return "\n".join(lines)


def noisy_solution(numbers: Sequence[int], rng: random.Random, slip_rate: float) -> str:
    """A solution where each partial sum independently slips by a small non-zero amount with `slip_rate`."""
    slips = {}
    for i in range(len(numbers) - 1):
        if rng.random() < slip_rate:
            slips[i] = rng.choice([-10, -2, -1, 1, 2, 10])
    return solution(numbers, slips)


class ToyArithmeticTask(MathTask):
    """Multi-term addition; integer answer in the last `\\boxed{}`; compact aggregation wording."""

    name = "toy"
    problem_kind = "addition problem"
    answer_format = "in \\boxed{}"

    def _aggregation_text(self, problem: Problem, candidates: Sequence[str]) -> str:
        blocks = "\n".join(f"#{i}\n{text.strip()}" for i, text in enumerate(candidates, 1))
        return f"{problem.question}\nCandidates (some may be wrong):\n{blocks}\nWrite the correct solution."

    def _refinement_text(self, problem: Problem, candidate: str) -> str:
        return f"{problem.question}\nCheck this solution (it may be wrong):\n#1\n{candidate.strip()}\nWrite the correct solution."

    def extract(self, completion: str) -> str | None:
        """The last boxed integer, or None."""
        boxed = last_boxed(completion or "")
        return boxed.strip() if boxed and boxed.strip().lstrip("-").isdigit() else None

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """1.0 when the boxed integer equals the sum."""
        if extracted is None or problem.answer is None:
            return 0.0
        return 1.0 if int(extracted) == int(problem.answer) else 0.0

    def equivalence_key(self, extracted: str | None, problem: Problem):
        """The integer value."""
        return int(extracted) if extracted is not None else None

    def same_answer(self, a: str, b: str) -> bool:
        """Integers compare by value."""
        return int(a) == int(b)
