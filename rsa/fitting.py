"""Prompts under a token budget: the one place where questions are checked and candidates are shortened.

`PromptFitter(count_tokens, budget)` is shared by RSA evaluation (`rsa.loop`, through `rsa.prompts.PromptBuilder`,
whose budget is `engine.max_model_len - max_new_tokens - CHAT_TEMPLATE_RESERVE` tokens of prompt text) and by
dataset augmentation (`rsa.augment`, whose budget is `max_model_len - max_completion_length` tokens of the
templated prompt, measured with the training tokenizer's chat template).

Rules: the question is never cut (`check_question` raises `ContextBudgetError` before anything is generated
when it cannot fit); a candidate is never dropped. Candidates that overflow are shortened, each to an
equal share of what the question leaves free (`equal_share_caps`), keeping their beginning and end around a
visible `TRUNCATION_MARKER`; one shrink loop then tightens the caps until the measured prompt fits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from rsa.types import Conversation

if TYPE_CHECKING:
    from rsa.tasks import Problem, Task

#: shown in place of the cut-out middle of a candidate that had to be shortened to fit the context
TRUNCATION_MARKER = "\n\n[... candidate truncated ...]\n\n"
#: tokens reserved for the chat template around the user turn (role headers, generation prompt);
#: the engine interface counts plain text only, so the template's own tokens are budgeted here
CHAT_TEMPLATE_RESERVE = 64
#: rounds of the shrink loop: cuts can merge tokens across the marker, so caps are tightened until it fits
SHRINK_ROUNDS = 8


class ContextBudgetError(ValueError):
    """A prompt cannot fit the context even with every candidate shortened (e.g. the question is too long)."""


class FittedPrompt(NamedTuple):
    """An aggregation prompt within budget: the conversation, how many candidates were shortened, and its
    measured tokens (None when it was short enough to fit without counting)."""

    conversation: Conversation
    truncated: int
    tokens: int | None


Explain = Callable[["Problem", str, int], str]


class PromptFitter:
    """Checks questions and fits aggregation prompts into `budget` tokens.

    `count_tokens` counts plain text (candidates, the prompt scaffold). `measure` counts a whole
    conversation against `budget` (default: `count_tokens` of its last message); `overhead` is how many of
    the measured tokens are not prompt text (e.g. the chat template's), so candidates share
    `budget - overhead - scaffold`. `explain(problem, what, tokens)` words the over-budget error.
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        budget: int,
        *,
        measure: Callable[[Conversation], int] | None = None,
        overhead: int = 0,
        explain: Explain | None = None,
    ) -> None:
        self.count_tokens = count_tokens
        self.budget = budget
        self.overhead = overhead
        self._measure = measure
        self._explain = explain or _default_explain(budget)
        self._marker_tokens: int | None = None
        self._scaffold_cache: dict[tuple[str, str, int], int] = {}

    @property
    def marker_tokens(self) -> int:
        """Token count of the truncation marker."""
        if self._marker_tokens is None:
            self._marker_tokens = self.count_tokens(TRUNCATION_MARKER)
        return self._marker_tokens

    def measure(self, conversation: Conversation) -> int:
        """Tokens of `conversation` as counted against the budget."""
        if self._measure is not None:
            return self._measure(conversation)
        return self.count_tokens(conversation[-1]["content"])

    def fits_without_counting(self, conversation: Conversation) -> bool:
        """True when `conversation` surely fits, judged from its UTF-8 length alone (plain-text budgets only).

        No tokenizer emits more tokens than UTF-8 bytes (byte-level BPE emits at most one per byte; the
        chat-template reserve absorbs a leading-space token), so short prompts skip the tokenizer.
        """
        if self._measure is not None:
            return False
        room = self.budget - self.overhead
        text = conversation[-1]["content"]
        return 4 * len(text) < room or len(text.encode("utf-8")) < room  # a character is at most 4 bytes

    def check_question(self, task: Task, problem: Problem, k: int | None, filler: str = TRUNCATION_MARKER) -> None:
        """Raise ContextBudgetError unless the plain prompt (k None) or the aggregation prompt around `k`
        candidates, each reduced to `filler`, fits the budget."""
        if k:
            conversation = task.aggregation_prompt(problem, [filler] * k)
            reduced = "each cut to the truncation marker," if filler == TRUNCATION_MARKER else "reduced to nothing"
            what = f"its aggregation prompt with {k} candidate(s) {reduced}"
        else:
            conversation, what = task.plain_prompt(problem), "its plain prompt"
        if self.fits_without_counting(conversation):
            return
        used = self.measure(conversation)
        if used > self.budget:
            raise ContextBudgetError(self._explain(problem, what, used))

    def scaffold_tokens(self, task: Task, problem: Problem, k: int) -> int:
        """Text tokens of the aggregation prompt with K empty candidates (cached per problem and K)."""
        key = (problem.id, problem.question, k)
        if key not in self._scaffold_cache:
            text = task.aggregation_prompt(problem, [""] * k)[-1]["content"]
            self._scaffold_cache[key] = self.count_tokens(text)
        return self._scaffold_cache[key]

    def fit(
        self,
        task: Task,
        problem: Problem,
        texts: Sequence[str],
        count_candidate: Callable[[int], int] | None = None,
    ) -> FittedPrompt:
        """The aggregation prompt over `texts`, candidates shortened until it fits the budget.

        `count_candidate(i)` gives the text tokens of candidate i (callers cache them); default: counted here.
        """
        conversation = task.aggregation_prompt(problem, texts)
        if self.fits_without_counting(conversation):
            return FittedPrompt(conversation, 0, None)
        available = self.budget - self.overhead - self.scaffold_tokens(task, problem, len(texts))
        count = count_candidate or (lambda i: self.count_tokens(texts[i]))
        counts = [count(i) for i in range(len(texts))]
        if self._measure is None and sum(counts) <= available:
            return FittedPrompt(conversation, 0, None)
        if self._measure is not None:
            tokens = self.measure(conversation)
            if tokens <= self.budget:
                return FittedPrompt(conversation, 0, tokens)
        if available < len(texts) * self.marker_tokens:
            raise ContextBudgetError(
                f"problem {problem.id!r}: the aggregation prompt leaves {available} tokens for {len(texts)} "
                "candidates, fewer than the truncation markers need; raise --max-model-len or lower --max-new-tokens"
            )
        caps = equal_share_caps(counts, available)
        for _ in range(SHRINK_ROUNDS):
            shortened = [
                t if cap >= n else self.shorten(t, cap - self.marker_tokens) for t, n, cap in zip(texts, counts, caps)
            ]
            conversation = task.aggregation_prompt(problem, shortened)
            tokens = self.measure(conversation)
            excess = tokens - self.budget
            if excess <= 0:
                return FittedPrompt(conversation, sum(1 for n, cap in zip(counts, caps) if cap < n), tokens)
            cut = [i for i, (n, cap) in enumerate(zip(counts, caps)) if cap < n]
            if cut:
                caps = [cap - (excess // len(cut) + 1) if i in cut else cap for i, cap in enumerate(caps)]
            else:  # every candidate whole, yet the measured prompt is over (template or merges): share less
                caps = equal_share_caps(counts, sum(counts) - excess - len(counts))
        raise ContextBudgetError(
            f"problem {problem.id!r}: could not shorten the candidates to fit {self.budget} tokens"
        )

    def shorten(self, text: str, max_tokens: int) -> str:
        """`text`'s beginning and end (about `max_tokens` tokens together) around the truncation marker."""
        if max_tokens <= 1:
            return TRUNCATION_MARKER.strip()
        head = _longest_prefix(text, max_tokens // 2, self.count_tokens)
        tail = _longest_suffix(text[len(head) :], max_tokens - max_tokens // 2, self.count_tokens)
        return head + TRUNCATION_MARKER + tail


def _default_explain(budget: int) -> Explain:
    def explain(problem: Problem, what: str, tokens: int) -> str:
        return (
            f"problem {problem.id!r}: {what} needs {tokens} tokens but only {budget} are free; "
            "the question is never truncated"
        )

    return explain


def equal_share_caps(counts: Sequence[int], available: int) -> list[int]:
    """Token caps giving every candidate an equal share of `available`; short ones keep their full length.

    Candidates shorter than their share hand the unused tokens on to the longer ones (water-filling).
    """
    caps = [0] * len(counts)
    remaining, left = available, len(counts)
    for i in sorted(range(len(counts)), key=lambda j: counts[j]):
        share = remaining // left
        caps[i] = min(counts[i], share)
        remaining -= caps[i]
        left -= 1
    return caps


def _longest_prefix(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    lo, hi = 0, len(text)  # binary search on characters: the longest prefix within max_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _longest_suffix(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[len(text) - mid :]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[len(text) - lo :]
