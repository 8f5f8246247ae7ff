"""Pick task for the CPU toy world: find two of the listed numbers that sum to a target.

A problem is "Pick two: 3 8 5 9 2 7 =12"; an answer names two of the numbers in the last `\\boxed{}`:

    \\boxed{3 9}

Producing an answer is a search over every pair, which a ~1M-parameter model does poorly; checking one is a
single addition. Aggregation answers therefore check each candidate with one written sum before choosing:

    #1 8+5=13 vs 12 no
    #2 3+9=12 vs 12 ok
    \\boxed{3 9}

Plain answers never write a sum, so RL on plain prompts alone cannot sharpen the checking that aggregation
needs: the situation in which the paper's aggregation-aware training should beat standard RL (docs/TOYWORLD.md).
Candidates are shown to the aggregator by their final answers (`#i a b`), so an RSA population stays in the
prompt distribution at every step whatever its members wrote before their box.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rsa.tasks.base import Problem, Task
from rsa.tasks.math import last_boxed

_QUESTION = re.compile(r"^Pick two: ((?:\d+ )+)=(\d+)$")
_CHECK = re.compile(r"^#(\d+) (-?\d+)\+(-?\d+)=(-?\d+) vs (-?\d+) (ok|no)$")


@dataclass(frozen=True)
class PickSpec:
    """Problem family: `size` numbers from 1 to `high`; the target is the sum of two of them."""

    size: int = 6
    high: int = 9

    @property
    def label(self) -> str:
        """`p<size>`, as `difficulty_of` reads it back from a question (e.g. `p6`)."""
        return f"p{self.size}"

    @classmethod
    def parse(cls, label: str) -> PickSpec:
        """The spec of a `p<size>` label; ValueError naming the label otherwise."""
        text = label.lower()
        if not text.startswith("p") or not text[1:].isdigit() or int(text[1:]) < 3:
            raise ValueError(f"pick difficulty {label!r}: expected p<size> with size >= 3, e.g. p6")
        return cls(int(text[1:]))


#: the pick world's problem families: six and eight numbers to search
DIFFICULTIES = ("p6", "p8")


@dataclass(frozen=True)
class PickProblem:
    """The parsed content of a pick question."""

    numbers: tuple[int, ...]
    target: int

    def valid_pairs(self) -> list[tuple[int, int]]:
        """Every distinct pair (as a sorted tuple of values) of listed numbers that sums to the target."""
        pairs = set()
        for i, a in enumerate(self.numbers):
            for b in self.numbers[i + 1 :]:
                if a + b == self.target:
                    pairs.add((min(a, b), max(a, b)))
        return sorted(pairs)

    def is_valid(self, pair: Sequence[int]) -> bool:
        """Two listed numbers (respecting how often each is listed) that sum to the target."""
        if len(pair) != 2 or sum(pair) != self.target:
            return False
        return not Counter(pair) - Counter(self.numbers)


def parse_question(question: str) -> PickProblem:
    """The numbers and target of a `Pick two: a b c ... =t` question; ValueError otherwise."""
    match = _QUESTION.match(question.strip())
    if match is None:
        raise ValueError(f"not a pick question: {question!r} (expected 'Pick two: 3 8 5 9 2 7 =12')")
    return PickProblem(tuple(int(x) for x in match.group(1).split()), int(match.group(2)))


def make_problem(rng: random.Random, spec: PickSpec, index: int, prefix: str = "pick") -> Problem:
    """One random pick problem with at least one valid pair; the gold answer is one valid pair."""
    while True:
        numbers = [rng.randint(1, spec.high) for _ in range(spec.size)]
        i, j = rng.sample(range(spec.size), 2)
        parsed = PickProblem(tuple(numbers), numbers[i] + numbers[j])
        pairs = parsed.valid_pairs()
        if len(pairs) <= 2:  # a target that many pairs reach makes random guessing too easy
            break
    question = "Pick two: " + " ".join(map(str, numbers)) + " =" + str(parsed.target)
    return Problem(
        id=f"{prefix}-{index}",
        task="pick",
        question=question,
        answer=" ".join(map(str, pairs[0])),
        meta={"difficulty": spec.label},
    )


def generate_problems(
    n: int, seed: int, spec: PickSpec | Sequence[PickSpec] | None = None, prefix: str = "pick"
) -> list[Problem]:
    """`n` pick problems from `seed` (deterministic); a sequence of specs is cycled through (a difficulty mix)."""
    rng = random.Random(seed)
    specs = [spec or PickSpec()] if spec is None or isinstance(spec, PickSpec) else list(spec)
    return [make_problem(rng, specs[i % len(specs)], i, prefix) for i in range(n)]


def answer_text(pair: Sequence[int]) -> str:
    """A plain answer: the pair in a box."""
    return f"\\boxed{{{pair[0]} {pair[1]}}}"


def parse_answer(text: str | None) -> tuple[int, int] | None:
    """The pair in the last `\\boxed{}` of `text`, or None when there is no box holding two integers."""
    boxed = last_boxed(text or "")
    parts = (boxed or "").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def noisy_answer(problem: PickProblem, rng: random.Random, valid_rate: float) -> str:
    """A weak solver's plain answer: a valid pair with `valid_rate`, otherwise a near miss (a pair whose sum is
    one or two off the target) when one exists, else any pair."""
    numbers = list(problem.numbers)
    valid = problem.valid_pairs()
    if valid and rng.random() < valid_rate:
        pair = list(rng.choice(valid))
    else:
        pairs = [(a, b) for i, a in enumerate(numbers) for b in numbers[i + 1 :] if a + b != problem.target]
        near = [p for p in pairs if 0 < abs(sum(p) - problem.target) <= 2]
        pair = list(rng.choice(near or pairs))
    rng.shuffle(pair)
    return answer_text(pair)


def check_line(index: int, pair: tuple[int, int] | None, target: int, written_sum: int | None = None) -> str:
    """One check of candidate `index`: its pair, the sum as written (the true sum unless given), the target beside
    it (a comparison a small model makes locally) and the verdict that follows from what is written; a candidate
    without an answer is marked `none`."""
    if pair is None:
        return f"#{index} none"
    total = pair[0] + pair[1] if written_sum is None else written_sum
    return f"#{index} {pair[0]}+{pair[1]}={total} vs {target} {'ok' if total == target else 'no'}"


def weak_aggregation(
    problem: PickProblem, candidates: Sequence[str], rng: random.Random, slip_rate: float, check_prob: float = 1.0
) -> str:
    """A weak aggregator's answer. With `check_prob` it checks every candidate with one written sum, each slipping
    (off by 1 or 2) with `slip_rate`, then copies the first candidate marked ok (a random candidate when none is);
    otherwise it copies a random candidate's answer without checking."""
    pairs = [parse_answer(c) for c in candidates]
    answered = [p for p in pairs if p is not None]
    fallback = rng.choice(answered) if answered else tuple(rng.sample(problem.numbers, 2))
    if rng.random() >= check_prob:
        return answer_text(fallback)
    lines, chosen = [], None
    for i, pair in enumerate(pairs, 1):
        written = None
        if pair is not None:
            written = pair[0] + pair[1]
            if rng.random() < slip_rate:
                written += rng.choice([-2, -1, 1, 2])
        lines.append(check_line(i, pair, problem.target, written))
        if chosen is None and pair is not None and written == problem.target:
            chosen = pair
    return "\n".join([*lines, answer_text(chosen or fallback)])


@dataclass(frozen=True)
class CheckRecord:
    """What an aggregation output's check lines get right against its candidates."""

    checks: int  # candidates the output wrote a check line for
    correct_verdicts: int  # check lines whose verdict (ok/no) is right for the candidate's true pair
    complete: bool  # one well-formed check line per candidate, in order, each naming the candidate's pair


def check_record(problem: PickProblem, candidates: Sequence[str], output: str) -> CheckRecord:
    """Compare the check lines of an aggregation `output` with the true validity of each candidate."""
    pairs = [parse_answer(c) for c in candidates]
    lines = [line.strip() for line in (output or "").splitlines() if line.strip().startswith("#")]
    checks = correct = 0
    complete = len(lines) == len(pairs)
    for position, line in enumerate(lines):
        pair = pairs[position] if position < len(pairs) else None
        match = _CHECK.match(line)
        if match is None or int(match.group(1)) != position + 1 or position >= len(pairs):
            complete = complete and pair is None and line == f"#{position + 1} none"
            continue
        checks += 1
        complete = complete and (int(match.group(2)), int(match.group(3))) == pair
        truly_valid = pair is not None and problem.is_valid(pair)
        correct += (match.group(6) == "ok") == truly_valid
    return CheckRecord(checks, correct, complete)


def checks_hold(problem: PickProblem, text: str) -> bool:
    """Every check line in `text` is well formed, adds up, and gives the verdict its sum implies."""
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith("#") or line.endswith(" none"):
            continue
        match = _CHECK.match(line)
        if match is None:
            return False
        a, b, total, target = (int(match.group(g)) for g in (2, 3, 4, 5))
        if a + b != total or target != problem.target or (match.group(6) == "ok") != (total == target):
            return False
    return True


def difficulty_of(question: str) -> str:
    """A problem's difficulty label from its question: `p<size>` (e.g. `p6`: six numbers to search)."""
    return f"p{len(parse_question(question).numbers)}"


class PickTask(Task):
    """Two listed numbers that sum to a target; the answer `a b` in the last `\\boxed{}`; compact wording."""

    name = "pick"
    problem_kind = "pick problem"
    answer_format = "as two numbers in \\boxed{}"

    def _aggregation_text(self, problem: Problem, candidates: Sequence[str]) -> str:
        return f"{problem.question}\nCandidates (some may be wrong):\n{self._answers(candidates)}\nCheck each."

    def _refinement_text(self, problem: Problem, candidate: str) -> str:
        return f"{problem.question}\nCandidates (some may be wrong):\n{self._answers([candidate])}\nCheck each."

    @staticmethod
    def _answers(candidates: Sequence[str]) -> str:
        shown = []
        for i, text in enumerate(candidates, 1):
            pair = parse_answer(text)
            shown.append(f"#{i} " + (f"{pair[0]} {pair[1]}" if pair else "none"))
        return "\n".join(shown)

    def extract(self, completion: str) -> str | None:
        """The pair in the last box as `a b`, or None."""
        pair = parse_answer(completion)
        return f"{pair[0]} {pair[1]}" if pair else None

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """1.0 when the pair is two listed numbers that sum to the target (any valid pair counts)."""
        if extracted is None:
            return 0.0
        pair = tuple(int(x) for x in extracted.split())
        return 1.0 if parse_question(problem.question).is_valid(pair) else 0.0

    def equivalence_key(self, extracted: str | None, problem: Problem):
        """The pair as a sorted tuple (order does not matter)."""
        return tuple(sorted(int(x) for x in extracted.split())) if extracted else None

    def same_answer(self, a: str, b: str) -> bool:
        """Pairs compare as sets of values."""
        return sorted(a.split()) == sorted(b.split())

    def validate(self, problem: Problem, where: str) -> None:
        """The question must be a well-formed pick question with at least one valid pair."""
        try:
            parsed = parse_question(problem.question)
        except ValueError as exc:
            raise ValueError(f"{where}: field 'question': {exc}") from None
        if not parsed.valid_pairs():
            raise ValueError(f"{where}: field 'question': no two listed numbers sum to {parsed.target}")
