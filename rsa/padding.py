"""Training forward passes without the padding of other rows: all-padding columns are cut per micro-batch.

TRL 1.16 pads a process's whole generation batch to one width: prompts left-padded to the longest prompt,
completions right-padded to the longest completion. Both forward passes then run on slices of that batch,
`per_device_train_batch_size` rows at a time (the old log-probs for importance sampling, and the loss), and
a slice computes the full width whatever its own rows hold. With the paper's mixture nearly every
generation batch holds a ~34k-token aggregation prompt, so a ~200-token plain prompt is computed at ~42k.

`install_padding_trim(trainer)` wraps `trainer._get_per_token_logps_and_entropies` (the one method both
passes call, chunk by chunk) so that each chunk first drops the leading prompt columns and the trailing
completion columns in which no row has a real token, and its outputs are padded back to the completion
width TRL expects (the cut columns are masked out of every loss and metric). Rotary position embeddings
depend on relative positions only, so cutting left padding leaves the log-probabilities unchanged up to
float rounding (tests/test_padding.py compares them). `benchmarks/bench_padding.py` measures the padding
share before and after.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def trim_bounds(attention_mask, logits_to_keep: int) -> tuple[int, int]:
    """(first column kept, completion columns kept) for one chunk of TRL's prompt+completion batch.

    Leading prompt columns with no real token in any row are cut, and trailing completion columns likewise;
    at least one completion column is kept.
    """
    width = attention_mask.size(1)
    prompt_width = width - logits_to_keep
    used = attention_mask.bool().any(dim=0)
    prompt_used = used[:prompt_width].nonzero()
    first = int(prompt_used[0]) if prompt_used.numel() else prompt_width
    completion_used = used[prompt_width:].nonzero()
    kept = int(completion_used[-1]) + 1 if completion_used.numel() else 1
    return first, kept


def computed_tokens(attention_mask, logits_to_keep: int, batch_size: int, trim: bool) -> tuple[int, int]:
    """(tokens computed, of which padding) by one pass over `attention_mask` in chunks of `batch_size` rows."""
    total = padding = 0
    for start in range(0, attention_mask.size(0), batch_size):
        chunk = attention_mask[start : start + batch_size]
        if trim:
            first, kept = trim_bounds(chunk, logits_to_keep)
            chunk = chunk[:, first : chunk.size(1) - logits_to_keep + kept]
        total += chunk.numel()
        padding += int((chunk == 0).sum())
    return total, padding


def install_padding_trim(trainer: Any) -> None:
    """Make `trainer`'s log-probability passes cut all-padding columns per chunk (text-only inputs).

    Multimodal inputs (pixel values, token type ids) are passed through untouched to TRL's own method.
    """
    import torch.nn.functional as F

    original = trainer._get_per_token_logps_and_entropies

    def per_token_logps_and_entropies(
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        if any(value is not None for value in multimodal.values()):
            return original(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **multimodal,
            )  # fmt: skip
        import torch

        batch_size = batch_size or input_ids.size(0)
        width = input_ids.size(1)
        logps, entropies, aux_losses = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            mask = attention_mask[start : start + batch_size]
            first, kept = trim_bounds(mask, logits_to_keep)
            end = width - logits_to_keep + kept
            chunk_logps, chunk_entropies, chunk_aux = original(
                model,
                input_ids[start : start + batch_size, first:end],
                mask[:, first:end],
                kept,
                batch_size=None,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
            )
            logps.append(F.pad(chunk_logps, (0, logits_to_keep - kept)))
            if compute_entropy:
                entropies.append(F.pad(chunk_entropies, (0, logits_to_keep - kept)))
            if compute_aux_loss:
                aux_losses.append(chunk_aux)
        return (
            torch.cat(logps, dim=0),
            torch.cat(entropies, dim=0) if compute_entropy else None,
            torch.stack(aux_losses).mean() if compute_aux_loss else None,
        )

    trainer._get_per_token_logps_and_entropies = per_token_logps_and_entropies
