"""The generation-engine interface shared by RSA evaluation, dataset augmentation and demos.

An engine turns a batch of chat conversations into one completion each. Callers hand it a whole RSA
step (all problems, all population slots) at once; the engine decides how to batch or stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from rsa.tasks.base import Conversation


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one batch. `seed` makes sampling reproducible on engines that honour it."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    """One completion: its text (reasoning stripped unless kept), generated token count, stop reason."""

    text: str
    num_tokens: int
    finish_reason: str = "stop"  # "stop" or "length"
    reasoning: str | None = None  # thinking-model reasoning content, when kept separately


class Engine(ABC):
    """A generation backend. Subclasses: hf (transformers), vllm (offline LLM), openai (HTTP servers)."""

    name: str = ""

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in order. `seeds` gives one sampling seed per request."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` under the model's tokenizer (no special tokens added)."""

    @property
    @abstractmethod
    def max_model_len(self) -> int:
        """The longest prompt plus completion, in tokens, the model accepts."""

    def close(self) -> None:
        """Release the engine's resources (processes, GPU memory, HTTP sessions)."""
