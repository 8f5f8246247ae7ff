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
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rsa.tasks.base import Problem
from rsa.tasks.math import MathTask, last_boxed


@dataclass(frozen=True)
class ToySpec:
    """Problem family: `terms` numbers of up to `digits` digits each."""

    terms: int = 4
    digits: int = 1

    @property
    def label(self) -> str:
        """`<terms>x<digits>`, as `difficulty_of` reads it back from a question (e.g. `4x1`)."""
        return f"{self.terms}x{self.digits}"

    @classmethod
    def parse(cls, label: str) -> ToySpec:
        """The spec of a `<terms>x<digits>` label; ValueError naming the label otherwise."""
        try:
            terms, digits = (int(x) for x in label.lower().split("x"))
        except ValueError:
            raise ValueError(f"toy difficulty {label!r}: expected <terms>x<digits>, e.g. 4x1") from None
        if terms < 2 or digits < 1:
            raise ValueError(f"toy difficulty {label!r}: needs >= 2 terms and >= 1 digit")
        return cls(terms, digits)


#: the demo's mix of difficulties: short, medium and long chains of one-digit numbers. Two-digit numbers (`4x2`)
#: are supported but were not learnt in 800 pre-training steps of the 64-wide model (docs/TOYWORLD.md).
DIFFICULTIES = ("3x1", "4x1", "6x1")


def make_problem(rng: random.Random, spec: ToySpec, index: int, prefix: str = "toy") -> Problem:
    """One random toy problem; the gold answer is the exact sum."""
    high = 10**spec.digits - 1
    low = 10 ** (spec.digits - 1) if spec.digits > 1 else 1
    numbers = [rng.randint(low, high) for _ in range(spec.terms)]
    question = "Add: " + "+".join(map(str, numbers))
    return Problem(
        id=f"{prefix}-{index}",
        task="toy",
        question=question,
        answer=str(sum(numbers)),
        meta={"numbers": numbers, "difficulty": spec.label},
    )


def generate_problems(
    n: int, seed: int, spec: ToySpec | Sequence[ToySpec] | None = None, prefix: str = "toy"
) -> list[Problem]:
    """`n` toy problems from `seed` (deterministic); a sequence of specs is cycled through (a difficulty mix)."""
    rng = random.Random(seed)
    specs = [spec or ToySpec()] if spec is None or isinstance(spec, ToySpec) else list(spec)
    return [make_problem(rng, specs[i % len(specs)], i, prefix) for i in range(n)]


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


def noisy_solution(
    numbers: Sequence[int],
    rng: random.Random,
    slip_rate: float,
    addend_rate: float = 0.0,
    chain_rate: float = 0.0,
) -> str:
    """A written solution with the error modes of a weak model, each independent per line:

    - a slip (`slip_rate`): the partial sum is off by a small non-zero amount, and the error propagates;
    - a wrong addend (`addend_rate`): the line restates the question's number wrongly and adds it correctly;
    - a broken chain (`chain_rate`): the line restarts from a number that is not the previous line's result.
    """
    lines, total = [], numbers[0]
    for i, x in enumerate(numbers[1:]):
        left = total
        if i > 0 and rng.random() < chain_rate:
            left = max(0, total + rng.choice([-10, -1, 1, 10]))
        if rng.random() < addend_rate:
            x = max(0, x + rng.choice([-2, -1, 1, 2]))
        new = left + x
        if rng.random() < slip_rate:
            new += rng.choice([-10, -2, -1, 1, 2, 10])
        lines.append(f"{left}+{x}={new}")
        total = new
    lines.append(f"\\boxed{{{total}}}")
    return "\n".join(lines)


_LINE = re.compile(r"^(-?\d+)\+(-?\d+)=(-?\d+)$")


@dataclass(frozen=True)
class Derivation:
    """What a toy solution's lines get right: `valid` when every check passes (then the answer is right)."""

    parsed: bool  # every line is `a+b=c` and the last is `\boxed{n}`
    arithmetic: bool  # every line's sum is right
    addends: bool  # the lines restate the question's numbers in order
    chain: bool  # each line starts from the previous line's result, and the box holds the last result

    @property
    def valid(self) -> bool:
        """Every check passes."""
        return self.parsed and self.arithmetic and self.addends and self.chain


def check_derivation(numbers: Sequence[int], text: str) -> Derivation:
    """Check a toy solution line by line against the question's `numbers`."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if len(lines) < 2 or not (lines[-1].startswith("\\boxed{") and lines[-1].endswith("}")):
        return Derivation(False, False, False, False)
    parts = [_LINE.match(line) for line in lines[:-1]]
    boxed = lines[-1][len("\\boxed{") : -1]
    if any(m is None for m in parts) or not boxed.lstrip("-").isdigit():
        return Derivation(False, False, False, False)
    triples = [tuple(int(g) for g in m.groups()) for m in parts]
    arithmetic = all(a + b == c for a, b, c in triples)
    addends = len(triples) == len(numbers) - 1 and [triples[0][0]] + [b for _, b, _ in triples] == list(numbers)
    chain = all(triples[i][0] == triples[i - 1][2] for i in range(1, len(triples))) and int(boxed) == triples[-1][2]
    return Derivation(True, arithmetic, addends, chain)


def difficulty_of(question: str) -> str:
    """A problem's difficulty label from its question: `<terms>x<digits>` (e.g. `4x1`: four one-digit terms)."""
    numbers = [int(x) for x in question.split(":", 1)[1].strip().split("+")]
    return f"{len(numbers)}x{max(len(str(n)) for n in numbers)}"


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
