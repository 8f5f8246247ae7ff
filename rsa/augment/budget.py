"""Prompt lengths under the training model's tokenizer and chat template (`LengthBudget`), and a text histogram."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rsa.fitting import TRUNCATION_MARKER, PromptFitter
from rsa.tasks import Conversation, Problem, get_task


class LengthBudget:
    """Prompt lengths under the training model's tokenizer and chat template.

    A prompt fits when its templated length (generation prompt included) plus `max_completion_length`
    is at most `max_model_len`. Candidates are capped by its `fitter()`, the prompt fitting RSA evaluation uses.
    """

    def __init__(self, tokenizer: Any, max_model_len: int, max_completion_length: int) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; training prompts are "
                "chat conversations, so pass the training model's tokenizer (--tokenizer)"
            )
        self.tokenizer = tokenizer
        self.max_model_len = int(max_model_len)
        self.max_completion_length = int(max_completion_length)
        self.prompt_limit = self.max_model_len - self.max_completion_length
        self.template_overhead = self.prompt_tokens([{"role": "user", "content": ""}])
        self.content_budget = self.prompt_limit - self.template_overhead

    @classmethod
    def from_pretrained(cls, name: str, max_model_len: int | None, max_completion_length: int) -> LengthBudget:
        """The budget of the tokenizer at `name`; `max_model_len` None reads the model config's context length."""
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"could not load the tokenizer {name!r} for length budgeting: {exc}. Pass --tokenizer with the "
                "training model's local directory"
            ) from exc
        if max_model_len is None:
            max_model_len = default_max_model_len(name)
        return cls(tokenizer, max_model_len, max_completion_length)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens_many(self, texts: Sequence[str], chunk: int = 256) -> list[int]:
        """Tokens of each text, counted in batched tokenizer calls (parallel in fast tokenizers)."""
        counts: list[int] = []
        for start in range(0, len(texts), chunk):
            encoded = self.tokenizer(list(texts[start : start + chunk]), add_special_tokens=False)["input_ids"]
            counts.extend(len(ids) for ids in encoded)
        return counts

    def prompt_tokens(self, conversation: Conversation) -> int:
        """Tokens of `conversation` under the chat template, assistant turn opened."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return self.count_tokens(text)

    def fitter(self) -> PromptFitter:
        """The `rsa.fitting.PromptFitter` of this budget: templated prompts measured exactly against `prompt_limit`."""
        return PromptFitter(
            self.count_tokens,
            self.prompt_limit,
            measure=self.prompt_tokens,
            overhead=self.template_overhead,
            explain=self.over_budget_message,
        )

    def over_budget_message(self, problem: Problem, what: str, tokens: int) -> str:
        """An error text naming the problem and the token counts."""
        return (
            f"problem {problem.id!r}: {what} has {tokens} tokens; with max_completion_length "
            f"{self.max_completion_length} that is {tokens + self.max_completion_length} > max_model_len "
            f"{self.max_model_len}. The question is never cut: raise --train-context-len or lower "
            "--max-completion-length" + (" / --k" if "candidate" in what else "")
        )

    def check_questions(self, problems: Sequence[Problem], k: int | None, overflow: str) -> None:
        """Raise ContextBudgetError naming the problem and token counts when a question cannot fit.

        Checked: the plain prompt, and (when `k` is given) the aggregation prompt around K candidates, empty
        for `overflow="drop"` or each reduced to the truncation marker for `overflow="cap"`.
        """
        fitter = self.fitter()
        filler = TRUNCATION_MARKER if overflow == "cap" else ""
        for problem in problems:
            task = get_task(problem.task)
            fitter.check_question(task, problem, None)
            if k:
                fitter.check_question(task, problem, k, filler)


def default_max_model_len(name: str) -> int:
    """The context length in the model config at `name` (`max_position_embeddings`); ValueError if unknown."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--train-context-len not given and the model config of {name!r} cannot be read: {exc}"
        ) from exc
    value = getattr(config, "max_position_embeddings", None)
    if not value:
        raise ValueError(f"--train-context-len not given and the config of {name!r} has no max_position_embeddings")
    return int(value)


def format_histogram(values: Sequence[int], limit: int, bins: int = 10, width: int = 40) -> str:
    """A text histogram of token lengths over `0..limit` in `bins` equal bins."""
    if not values:
        return "(no prompts)"
    top = max(limit, max(values))
    step = max(1, math.ceil((top + 1) / bins))
    counts = Counter(min(v // step, bins - 1) for v in values)
    peak = max(counts.values())
    lines = []
    for b in range(bins):
        lo, hi = b * step, min((b + 1) * step - 1, top) if b < bins - 1 else top
        n = counts.get(b, 0)
        bar = "#" * (round(width * n / peak) if n else 0)
        lines.append(f"{lo:>7}-{hi:<7} |{bar:<{width}} {n}")
    return "\n".join(lines)
