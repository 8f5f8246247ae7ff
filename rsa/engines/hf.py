"""Transformers generation engine: the CPU default, batched with left padding.

No async path (`supports_async` is False): under the RSA loop's async schedule the hf engine keeps
the barrier, one batched `generate` call per step, and the loop logs that it does.

Requests are sorted by prompt length and run in micro-batches of `batch_size` through
`model.generate`. Sampling (temperature, top_p) is done by our own logits processor with one
`torch.Generator` per request, seeded from the request's seed, so every request draws from its own
random stream.

Guarantee: a request's completion depends only on (prompt, seed, sampling params, model, device,
dtype), not on which other requests share its batch, the micro-batch size or the request order,
as long as the model's logits for that row are bit-identical in and out of the batch. The tests
check that in float32 on CPU; on a GPU, batched kernels (bfloat16 above all) can differ in the last
bits, and a sampled completion can then depend on its batch. The same batch with the same seeds
always repeats exactly. Unseeded
requests get a fresh random seed each call. The model's own generation defaults (top_k, repetition penalty, ...) are not
applied: sampling is exactly what `SamplingParams` says.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from rsa.engines.base import (
    THINK_CLOSE,
    THINK_OPEN,
    Engine,
    Generation,
    SamplingParams,
    batch_seeds,
    canonical_dtype,
    check_reasoning_mode,
    split_reasoning,
)
from rsa.types import Conversation

logger = logging.getLogger(__name__)

_SYSTEM_RANDOM = random.SystemRandom()


def _seeded_sampler_class():
    """The logits-processor class (built lazily so importing this module does not import torch)."""
    import torch
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        """Picks each row's next token with that row's generator; returns scores that are -inf except
        at the chosen token, so greedy decoding in `generate` takes exactly that token."""

        def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
            self.temperature = temperature
            self.top_p = top_p
            self.generators = generators

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.temperature == 0:
                chosen = scores.argmax(dim=-1)
            else:
                probs = torch.softmax(scores.float() / self.temperature, dim=-1)
                sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
                if self.top_p < 1.0:
                    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
                    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
                    sorted_probs = sorted_probs * (mass_before < self.top_p)
                cumulative = sorted_probs.cumsum(dim=-1)
                uniform = torch.stack([torch.rand((), generator=g, device=g.device) for g in self.generators]).to(
                    cumulative.device
                )
                target = (uniform * cumulative[:, -1]).unsqueeze(1)
                position = torch.searchsorted(cumulative, target, right=True).clamp(max=scores.shape[-1] - 1)
                chosen = sorted_ids.gather(1, position).squeeze(1)
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, chosen.unsqueeze(1), 0.0)
            return out

    return SeededSampler


class HFEngine(Engine):
    """Generation with a transformers causal LM, in left-padded micro-batches.

    `model`: a local directory (or hub id when online). `tokenizer`: its own path if different.
    `device`: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ... `dtype`: "auto"
    (the checkpoint's), "float32", "bfloat16", "float16". `batch_size`: requests per micro-batch.
    `max_model_len`: overrides the model's `max_position_embeddings`. `reasoning`: "separate",
    "strip" or "keep" (see `rsa.engines.base`).
    """

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        max_model_len: int | None = None,
        reasoning: str = "separate",
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model
        self.batch_size = batch_size
        self.reasoning = check_reasoning_mode(reasoning)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = canonical_dtype(dtype)
        torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        load_kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(model, **load_kwargs).to(self.device).eval()

        self.eos_token_ids = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        # Our sampler decides every token; the checkpoint's sampling defaults must not add processors.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, do_sample=False
        )
        self._max_model_len = max_model_len or int(
            getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        # Tokens dropped when decoding: special tokens, except think tags (kept for `reasoning`).
        keep = {self.tokenizer.convert_tokens_to_ids(t) for t in (THINK_OPEN, THINK_CLOSE)}
        self._skip_ids = set(self.tokenizer.all_special_ids) - keep
        self._skip_ids.update(self.eos_token_ids)
        self._skip_ids.add(self.pad_token_id)
        logger.info("hf engine: %s on %s (%s), batch size %d", model, self.device, self.model.dtype, batch_size)

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in configured if isinstance(configured, (list, tuple)) else [configured]:
            if value is not None and value not in ids:
                ids.append(int(value))
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(int(self.tokenizer.eos_token_id))
        if not ids:
            raise ValueError(f"model {self.model_name!r} defines no end-of-sequence token")
        return ids

    @property
    def max_model_len(self) -> int:
        """The model's context length (`max_position_embeddings` unless overridden)."""
        return self._max_model_len

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, conversation: Conversation) -> list[int]:
        """Token ids of `conversation` under the chat template, assistant turn opened."""
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in order; see the module docstring for the seed guarantee."""
        per_request = batch_seeds(len(conversations), params, seeds)
        per_request = [s if s is not None else _SYSTEM_RANDOM.randrange(2**63) for s in per_request]
        prompts = [self.encode_prompt(c) for c in conversations]
        limits = []
        for i, ids in enumerate(prompts):
            room = self._max_model_len - len(ids)
            if room < 1:
                raise ValueError(
                    f"conversation {i}: prompt has {len(ids)} tokens, no room left in max_model_len={self._max_model_len}"
                )
            limits.append(min(params.max_new_tokens, room))

        # Longest first: similar lengths share a micro-batch (less padding) and memory peaks early.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        num_batches = (len(order) + self.batch_size - 1) // self.batch_size
        logger.debug("hf: %d requests in %d micro-batches", len(order), num_batches)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            outputs = self._generate_micro_batch(
                [prompts[i] for i in rows], [limits[i] for i in rows], [per_request[i] for i in rows], params
            )
            for i, generation in zip(rows, outputs):
                results[i] = generation
        return [r for r in results if r is not None]

    def _generate_micro_batch(
        self, prompts: list[list[int]], limits: list[int], seeds: list[int], params: SamplingParams
    ) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        sampler = _seeded_sampler_class()(params.temperature, params.top_p, generators)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max(limits),
                logits_processor=LogitsProcessorList([sampler]),
            )
        new_tokens = output[:, width:].tolist()
        eos = set(self.eos_token_ids)
        generations = []
        for prompt, tokens, limit in zip(prompts, new_tokens, limits):
            tokens = tokens[:limit]
            stop_at = next((j for j, t in enumerate(tokens) if t in eos), None)
            if stop_at is None:
                body, num_tokens, finish = tokens, len(tokens), "length"
            else:
                # The end-of-sequence token counts as generated (as in vLLM and OpenAI usage).
                body, num_tokens, finish = tokens[:stop_at], stop_at + 1, "stop"
            raw = self.tokenizer.decode([t for t in body if t not in self._skip_ids], skip_special_tokens=False)
            text, reasoning = split_reasoning(raw, self.reasoning)
            generations.append(
                Generation(
                    text=text,
                    num_tokens=num_tokens,
                    finish_reason=finish,
                    reasoning=reasoning,
                    prompt_tokens=len(prompt),
                )
            )
        return generations

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        import gc

        import torch

        self.model = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
