"""The generation-engine interface shared by RSA evaluation, dataset augmentation and demos.

An engine turns a batch of chat conversations into one completion each (`generate`). Engines with an
async path (`supports_async`: openai, vllm) also take requests one at a time while others run
(`agenerate_one`), which the RSA loop's async schedule uses to keep them full; the hf engine has only
the batched call.

Seeds: request i is sampled with `seeds[i]` when `seeds` is given, else with `params.seed + i` when
`params.seed` is set, else unseeded (see `batch_seeds`). What a seed guarantees differs by engine
and is stated in each engine's docstring.

Thinking models: `reasoning` selects what happens to the reasoning part of a completion (the text
up to `</think>`, or a server's `reasoning_content`): "separate" (default) moves it to
`Generation.reasoning`, "strip" drops it, "keep" leaves the completion text untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rsa.types import Conversation

ReasoningMode = Literal["separate", "strip", "keep"]
REASONING_MODES: tuple[str, ...] = ("separate", "strip", "keep")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
#: model dtypes the hf and vllm engines take, and the common spellings of each
DTYPES: dict[str, tuple[str, ...]] = {
    "auto": (),
    "bfloat16": ("bf16",),
    "float16": ("fp16", "half"),
    "float32": ("fp32", "float"),
}


def canonical_dtype(name: str) -> str:
    """The dtype name the engines take (`bf16` -> `bfloat16`, ...); ValueError listing the choices otherwise."""
    key = str(name).strip().lower().removeprefix("torch.")
    for dtype, aliases in DTYPES.items():
        if key == dtype or key in aliases:
            return dtype
    choices = ", ".join(f"{d} ({', '.join(a)})" if a else d for d, a in DTYPES.items())
    raise ValueError(f"--dtype {name!r}: unknown dtype; choose one of {choices}")


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one batch. `seed` makes sampling reproducible on engines that honour it."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Generation:
    """One completion: its text (reasoning stripped unless kept), generated token count, stop reason."""

    text: str
    num_tokens: int
    finish_reason: str = "stop"  # "stop" or "length" (servers may report others, passed through)
    reasoning: str | None = None  # thinking-model reasoning content, when kept separately
    prompt_tokens: int | None = None  # tokens of the prompt as the engine saw it (None: the engine did not say)


class EngineError(RuntimeError):
    """A generation backend failed (unreachable server, rejected request, engine start-up)."""


class Engine(ABC):
    """A generation backend. Subclasses: hf (transformers), vllm (offline LLM), openai (HTTP servers)."""

    name: str = ""
    #: whether `agenerate_one` is implemented (requests submitted one by one while others run)
    supports_async: bool = False

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

    async def agenerate_one(
        self, conversation: Conversation, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        """One completion, awaited while other requests run; EngineError when the request fails for good."""
        raise NotImplementedError(f"engine {self.name or type(self).__name__} has no async path; use generate")

    @property
    def in_flight(self) -> int:
        """Requests submitted through `agenerate_one` and not yet finished (0 for engines without an async path)."""
        return 0

    async def aclose(self) -> None:
        """Release what `agenerate_one` bound to the running event loop (HTTP clients, background tasks)."""

    def close(self) -> None:
        """Release the engine's resources (processes, GPU memory, HTTP sessions)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def batch_seeds(n: int, params: SamplingParams, seeds: Sequence[int] | None) -> list[int | None]:
    """The per-request seed list of a batch call: `seeds` itself, else `params.seed + i`, else None for every request."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} conversations; pass one seed per conversation")
        return [int(s) for s in seeds]
    if params.seed is not None:
        return [params.seed + i for i in range(n)]
    return [None] * n


def check_reasoning_mode(mode: str) -> str:
    """Return `mode` if it is a valid reasoning mode, else raise ValueError listing the valid ones."""
    if mode not in REASONING_MODES:
        raise ValueError(f"reasoning={mode!r}: expected one of {', '.join(REASONING_MODES)}")
    return mode


def split_reasoning(text: str, mode: str = "separate") -> tuple[str, str | None]:
    """Split a completion into (answer text, reasoning) according to `mode`.

    The reasoning is the text before the first `</think>` (an opening `<think>` is dropped; Qwen3
    templates often put it in the prompt). A completion that opens `<think>` and never closes it (cut
    off while thinking) is all reasoning and has an empty answer. Without think tags the text is the
    answer and the reasoning is None. Mode "keep" returns the text unchanged and None.
    """
    check_reasoning_mode(mode)
    if mode == "keep":
        return text, None
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep:
        reasoning = head.strip()
        if reasoning.startswith(THINK_OPEN):
            reasoning = reasoning[len(THINK_OPEN) :].strip()
        answer = tail.strip()
    elif text.lstrip().startswith(THINK_OPEN):
        reasoning, answer = text.lstrip()[len(THINK_OPEN) :].strip(), ""
    else:
        return text, None
    return answer, (reasoning if mode == "separate" else None)


def merge_reasoning(text: str, reasoning: str | None, mode: str = "separate") -> tuple[str, str | None]:
    """Apply `mode` to a server's separate reasoning field: "keep" re-inserts it as a think block."""
    check_reasoning_mode(mode)
    if not reasoning:
        # Servers without a reasoning parser return the think block inside the text.
        return split_reasoning(text, mode)
    if mode == "keep":
        return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{text}", None
    return text, (reasoning if mode == "separate" else None)
