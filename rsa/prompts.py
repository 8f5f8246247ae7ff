"""RSA evaluation's prompts: plain and aggregation prompts within the engine's context, for the loop (`rsa.loop`).

The budget is `engine.max_model_len - max_new_tokens - CHAT_TEMPLATE_RESERVE` tokens of prompt text; the
fitting itself (question check, candidate shortening) is `rsa.fitting.PromptFitter`, shared with augment and
on-policy training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from rsa.fitting import CHAT_TEMPLATE_RESERVE, ContextBudgetError, PromptFitter
from rsa.types import Conversation

if TYPE_CHECKING:
    from rsa.engines.base import Engine
    from rsa.tasks import Problem, Task


class Candidate(Protocol):
    """What a prompt needs of a member shown as a candidate (`rsa.loop.Member` is one)."""

    text: str
    reasoning: str | None
    candidate_tokens: int | None  # tokens of its candidate text, counted the first time they are needed


class PromptBuilder:
    """RSA evaluation's prompts: plain and aggregation prompts within `engine.max_model_len - max_new_tokens`."""

    def __init__(self, engine: Engine, max_new_tokens: int, thinking: str = "strip") -> None:
        self.engine = engine
        self.thinking = thinking
        budget = engine.max_model_len - max_new_tokens - CHAT_TEMPLATE_RESERVE
        if budget <= 0:
            raise ContextBudgetError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of "
                f"{engine.max_model_len} tokens; lower --max-new-tokens or raise --max-model-len"
            )

        def explain(problem: Problem, what: str, tokens: int) -> str:
            return (
                f"problem {problem.id!r}: {what} needs {tokens} tokens but only {budget} are free "
                f"(max_model_len {engine.max_model_len} - max_new_tokens - {CHAT_TEMPLATE_RESERVE} reserved "
                "for the chat template); the question is never truncated: raise --max-model-len or lower "
                "--max-new-tokens / --k"
            )

        self.fitter = PromptFitter(engine.count_tokens, budget, explain=explain)

    @property
    def prompt_budget(self) -> int:
        """Tokens of prompt text the context leaves free."""
        return self.fitter.budget

    def candidate_text(self, member: Candidate) -> str:
        """The text of `member` as a candidate: its answer, with its reasoning first when thinking is kept."""
        if self.thinking == "keep" and member.reasoning:
            return f"<think>\n{member.reasoning.strip()}\n</think>\n\n{member.text}"
        return member.text

    def check_fits(self, task: Task, problem: Problem, k: int | None) -> None:
        """Raise ContextBudgetError unless the question (and, for K given, K shortened candidates) fits."""
        self.fitter.check_question(task, problem, k)

    def plain(self, task: Task, problem: Problem) -> Conversation:
        """The step-1 prompt (the question is never cut; `check_fits` guards its length)."""
        return task.plain_prompt(problem)

    def aggregation(self, task: Task, problem: Problem, candidates: Sequence[Candidate]) -> tuple[Conversation, int]:
        """The aggregation prompt over `candidates`, shortened to fit; returns (prompt, candidates truncated).

        A candidate's token count is kept in its `candidate_tokens`, since one member is a candidate in several sets.
        """
        texts = [self.candidate_text(m) for m in candidates]

        def count(i: int) -> int:
            member = candidates[i]
            if member.candidate_tokens is None:
                member.candidate_tokens = self.fitter.count_tokens(texts[i])
            return member.candidate_tokens

        fitted = self.fitter.fit(task, problem, texts, count)
        return fitted.conversation, fitted.truncated
