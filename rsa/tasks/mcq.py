"""Multiple choice (SuperGPQA style, options A-J): the option letter in `\\boxed{}`.

Extraction is tolerant of the forms models write: `\\boxed{B}`, `\\boxed{\\text{B}}`, `\\boxed{(B)}`,
`\\boxed{B. some text}`; without a box, a closing "Answer: (B)" / "answer is B." line is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Hashable

from rsa.tasks.base import Problem, Task
from rsa.tasks.math import last_boxed

LETTERS = "ABCDEFGHIJ"
_LETTER_IN_BOX = re.compile(r"^\(?\s*([A-J])\s*\)?(?:[.:)]|\s|$)")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_ANSWER_LINE = re.compile(r"answer\s*(?:is|:)?\s*[:\s]*\(?\**([A-J])\**\)?(?![A-Za-z])", re.IGNORECASE)


def option_letter(text: str) -> str | None:
    """The option letter A-J that `text` (a boxed content or short answer) names, or None."""
    s = _TEXT_WRAP.sub(r"\1", text.strip())
    s = s.strip().strip("$").strip()
    m = _LETTER_IN_BOX.match(s)
    return m.group(1) if m else None


class MultipleChoiceTask(Task):
    """Multiple choice with options A-J; score 1 when the letter matches the gold letter."""

    name = "mcq"
    problem_kind = "multiple-choice question"
    answer_format = "as the letter of the correct option in \\boxed{}"

    def extract(self, completion: str) -> str | None:
        """The chosen option letter, or None."""
        boxed = last_boxed(completion or "")
        if boxed is not None:
            return option_letter(boxed)
        matches = _ANSWER_LINE.findall(completion or "")
        return matches[-1].upper() if matches else None

    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """1.0 when the letter equals the gold letter."""
        if extracted is None or problem.answer is None:
            return 0.0
        gold = option_letter(str(problem.answer)) or str(problem.answer).strip().upper()
        return 1.0 if extracted.upper() == gold else 0.0

    def equivalence_key(self, extracted: str | None, problem: Problem) -> Hashable | None:
        """The upper-case letter."""
        return extracted.upper() if extracted else None

    def validate(self, problem: Problem, where: str) -> None:
        """Require a gold answer that names one option letter A-J."""
        super().validate(problem, where)
        if option_letter(str(problem.answer)) is None:
            raise ValueError(f"{where}: field 'answer' = {problem.answer!r} is not an option letter A-J")
