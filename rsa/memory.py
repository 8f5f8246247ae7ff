"""GPU memory arithmetic of the colocated recipe: vLLM's KV cache at a context length, and what a card holds.

Pure arithmetic from a model's shape (no torch, nothing loaded), used by the recipe header, docs/TRAINING.md
("Hardware"), tests/test_memory.py (which checks the recipe's numbers against the card size it states) and
launch/gpu_check.sh (which prints the sizing for the card it runs on, next to what vLLM really reserved).

vLLM's `gpu_memory_utilization` is the share of the card's total memory that one vLLM instance may use for
its weights, its activation peak and its KV cache together; what is left after weights and activations is
KV cache. A sequence of the full context needs `context x kv_bytes_per_token` of it, and vLLM refuses to
start when not even one fits. With vLLM colocated, the training process holds its ZeRO-3 model states on the
same card while vLLM generates (sleep mode frees vLLM's memory only during the training passes).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

#: vLLM's memory besides weights and KV cache: activation peak at TRL's max_num_batched_tokens 4096, the
#: sampler over a 152k vocabulary, CUDA graphs, non-torch allocations. An assumption; gpu_check.sh measures.
VLLM_OVERHEAD_GIB = 2.0
#: the training process's CUDA context and allocator slack, besides its model states. An assumption.
TRAINER_OVERHEAD_GIB = 2.0
#: bytes per parameter of mixed-precision Adam under ZeRO (bf16 weights and gradients, fp32 master weights,
#: momentum and variance), sharded across the training processes by ZeRO-3
ZERO_BYTES_PER_PARAM = 16


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer's config.json that its memory depends on."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    def parameters(self) -> int:
        """Parameter count (attention, gated MLP, RMS norms incl. per-head q/k norms, embeddings)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads) + 2 * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token takes in every layer (keys and values)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


#: Qwen/Qwen3-4B-Instruct-2507's config.json (the paper's model)
QWEN3_4B = ModelShape("Qwen3-4B-Instruct-2507", layers=36, hidden=2560, intermediate=9728, heads=32, kv_heads=8,
                      head_dim=128, vocab=151936, tied_embeddings=True)  # fmt: skip


@dataclass(frozen=True)
class Sizing:
    """The memory plan of one GPU running a training process with a colocated vLLM engine (GiB)."""

    card_gib: float
    vllm_gib: float
    weights_gib: float
    kv_cache_gib: float
    kv_per_sequence_gib: float
    full_sequences: float
    trainer_gib: float

    @property
    def fits(self) -> bool:
        """True when vLLM can start (one full-context sequence fits) and vLLM + trainer fit the card."""
        return self.full_sequences >= 1 and self.vllm_gib + self.trainer_gib <= self.card_gib


def colocate_sizing(
    shape: ModelShape, card_gib: float, utilization: float, context: int, processes: int, weight_bytes: int = 2
) -> Sizing:
    """The plan of one GPU: vLLM at `utilization` of `card_gib`, KV cache at `context` tokens, ZeRO-3 over `processes`."""
    vllm = utilization * card_gib
    weights = shape.parameters() * weight_bytes / GIB
    kv_cache = max(0.0, vllm - weights - VLLM_OVERHEAD_GIB)
    per_sequence = context * shape.kv_bytes_per_token() / GIB
    trainer = shape.parameters() * ZERO_BYTES_PER_PARAM / processes / GIB + TRAINER_OVERHEAD_GIB
    return Sizing(card_gib, vllm, weights, kv_cache, per_sequence, kv_cache / per_sequence, trainer)


def smallest_utilization(shape: ModelShape, card_gib: float, context: int, sequences: int = 1) -> float:
    """The `gpu_memory_utilization` (2 decimals, rounded up) at which `sequences` full-context sequences fit."""
    need = shape.parameters() * 2 / GIB + VLLM_OVERHEAD_GIB + sequences * context * shape.kv_bytes_per_token() / GIB
    return -(-round(need / card_gib * 10000) // 100) / 100


def describe(sizing: Sizing, utilization: float, context: int) -> str:
    """One paragraph of the plan, in the words of the recipe header and docs/TRAINING.md."""
    return (
        f"card {sizing.card_gib:.1f} GiB; vLLM at gpu_memory_utilization {utilization}: {sizing.vllm_gib:.1f} GiB = "
        f"weights {sizing.weights_gib:.1f} + overhead {VLLM_OVERHEAD_GIB:.1f} + KV cache {sizing.kv_cache_gib:.1f} "
        f"GiB; one {context:,}-token sequence needs {sizing.kv_per_sequence_gib:.2f} GiB of KV cache, so "
        f"{sizing.full_sequences:.1f} fit at once; trainer (ZeRO-3 states + overhead) {sizing.trainer_gib:.1f} GiB; "
        f"{'fits' if sizing.fits else 'does NOT fit'}"
    )
