"""The task interface: one object per task family owns its prompts, answer extraction and scoring.

Every consumer (RSA evaluation, dataset augmentation, GRPO rewards, `rsa score`) goes through a
`Task`, so evaluation prompts and training prompts cannot drift apart and one scorer grades both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsa.types import Conversation, Message

__all__ = ["CORRECT_SCORE", "PROMPT_VERSION", "Conversation", "Message", "Problem", "Task"]

# Version of the prompt wording; recorded in run manifests and dataset provenance so that a change
# of wording is visible when results are compared.
PROMPT_VERSION = "1"

#: a score at or above this is "correct" (full marks; partial credit such as Reasoning Gym's is not), used
#: alike by Pass@N, candidate classes in augmentation and 0/1 rewards
CORRECT_SCORE = 1.0 - 1e-9


@dataclass(frozen=True)
class Problem:
    """One problem to solve.

    `question` is the full user-turn text of the plain prompt (already carrying the task's answer-format
    instruction when the source dataset includes it). `answer` is the gold answer as text (None when the
    source has none). `meta` holds what a scorer needs beyond the gold answer, e.g. a Reasoning Gym
    `entry`/`dataset_name`, multiple-choice `options`, or code `tests`.
    """

    id: str
    task: str
    question: str
    answer: str | None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class Task(ABC):
    """A task family: prompt wording, answer extraction, scoring and the majority-vote key."""

    #: registry name, also the value of the `task` column in datasets and score files
    name: str = ""
    #: how the aggregation prompt names the problem ("math problem", "reasoning problem", ...)
    problem_kind: str = "problem"
    #: how the final answer must be written, quoted into prompts
    answer_format: str = ""

    # ----- prompts -----------------------------------------------------------------------------
    def plain_prompt(self, problem: Problem) -> Conversation:
        """The step-1 prompt: one user turn holding the question."""
        return [{"role": "user", "content": problem.question}]

    def aggregation_prompt(self, problem: Problem, candidates: Sequence[str]) -> Conversation:
        """The prompt asking to merge `candidates` (K >= 2) into one improved solution; K = 1 refines."""
        if not candidates:
            raise ValueError(f"aggregation prompt for problem {problem.id!r} needs at least one candidate")
        if len(candidates) == 1:
            return [{"role": "user", "content": self._refinement_text(problem, candidates[0])}]
        return [{"role": "user", "content": self._aggregation_text(problem, candidates)}]

    def _aggregation_text(self, problem: Problem, candidates: Sequence[str]) -> str:
        blocks = "\n\n".join(
            f"---- Candidate solution {i} ----\n{text.strip()}" for i, text in enumerate(candidates, 1)
        )
        return (
            f"You are given a {self.problem_kind} and {len(candidates)} candidate solutions. "
            "Some candidates may be incorrect or contain errors. Aggregate the useful ideas into a single, "
            "high-quality solution. Reason carefully: if the candidates disagree, work out which reasoning "
            "path is correct; if all of them are wrong, try a different strategy. "
            f"End with the final answer {self.answer_format}.\n\n"
            f"Problem:\n{problem.question.strip()}\n\n"
            f"{blocks}\n\n"
            f"Now write one improved, self-contained solution. End with the final answer {self.answer_format}."
        )

    def _refinement_text(self, problem: Problem, candidate: str) -> str:
        return (
            f"You are given a {self.problem_kind} and one candidate solution, which may be incorrect or "
            "contain errors. Check it step by step, fix any mistakes, and write an improved solution; if "
            "its approach is wrong, solve the problem a different way. "
            f"End with the final answer {self.answer_format}.\n\n"
            f"Problem:\n{problem.question.strip()}\n\n"
            f"---- Candidate solution ----\n{candidate.strip()}\n\n"
            f"Now write one improved, self-contained solution. End with the final answer {self.answer_format}."
        )

    # ----- grading -----------------------------------------------------------------------------
    @abstractmethod
    def extract(self, completion: str) -> str | None:
        """The final answer text in `completion`, or None when there is none."""

    @abstractmethod
    def score_extracted(self, extracted: str | None, problem: Problem) -> float:
        """Score in [0, 1] of an already extracted answer (None scores 0)."""

    def score(self, completion: str, problem: Problem) -> float:
        """Score in [0, 1] of a full completion against the problem's gold answer."""
        return self.score_extracted(self.extract(completion), problem)

    def equivalence_key(self, extracted: str | None, problem: Problem) -> Hashable | None:
        """A key equal for equivalent answers (majority voting); None for a missing answer."""
        if extracted is None:
            return None
        key = " ".join(extracted.split())
        return key or None

    def validate(self, problem: Problem, where: str) -> None:
        """Raise ValueError naming `where` when `problem` lacks what this task's scorer needs."""
        if problem.answer is None or str(problem.answer).strip() == "":
            raise ValueError(f"{where}: field 'answer' (gold answer) is missing or empty; task {self.name!r} needs it")
