"""Padding trimmed per forward chunk (rsa.padding): same log-probabilities, fewer computed tokens, real TRL."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rsa.padding import computed_tokens, install_padding_trim, trim_bounds  # noqa: E402


def _batch(prompt_lengths, completion_lengths, vocab: int = 100, seed: int = 0):
    """TRL's layout: prompts left-padded, completions right-padded, concatenated (ids, mask, completion width)."""
    generator = torch.Generator().manual_seed(seed)
    width_p, width_c = max(prompt_lengths), max(completion_lengths)
    ids = torch.zeros(len(prompt_lengths), width_p + width_c, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        ids[row, width_p - p : width_p + c] = torch.randint(3, vocab, (p + c,), generator=generator)
        mask[row, width_p - p : width_p + c] = 1
    return ids, mask, width_c


def test_trim_bounds_cut_only_columns_without_any_real_token():
    _, mask, width_c = _batch([3, 5], [2, 4])  # widths: prompt 5, completion 4
    assert trim_bounds(mask, width_c) == (0, 4)  # the longest rows use every column
    assert trim_bounds(mask[:1], width_c) == (2, 2)  # row 0 alone: 2 prompt columns and 2 completion columns cut
    assert trim_bounds(torch.zeros(1, 6, dtype=torch.long), 3) == (3, 1)  # nothing real: one column kept
    # one 40-token prompt with a 10-token completion next to a 4 + 2 row, chunks of one row
    _, mask, width_c = _batch([40, 4], [10, 2])
    before, before_pad = computed_tokens(mask, width_c, 1, trim=False)
    after, after_pad = computed_tokens(mask, width_c, 1, trim=True)
    assert (before, before_pad) == (100, 100 - 56) and (after, after_pad) == (56, 0)


@pytest.mark.slow
def test_trimmed_passes_give_trl_log_probs_and_entropies(tiny_model_dir, tmp_path):
    """TRL's own method with and without the trim, on the tiny model: equal where the mask is on."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rsa.grpo_setup import reward_length_shaping

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=2,
                      per_device_train_batch_size=2, report_to=[], max_completion_length=8)  # fmt: skip
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}]}] * 2)
    trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[reward_length_shaping], args=args, train_dataset=data)
    ids, mask, width_c = _batch([37, 5, 12, 3], [9, 2, 14, 1], vocab=trainer.model.config.vocab_size)
    with torch.no_grad():
        full = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width_c, 1, True)
        install_padding_trim(trainer)
        trimmed = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width_c, 1, True)
    on = mask[:, -width_c:].bool()
    assert trimmed[0].shape == full[0].shape and trimmed[1].shape == full[1].shape
    assert torch.allclose(trimmed[0][on], full[0][on], atol=1e-4), (trimmed[0][on] - full[0][on]).abs().max()
    assert torch.allclose(trimmed[1][on], full[1][on], atol=1e-4)
    assert (trimmed[0][~on] == 0).all()  # cut columns come back as zeros, masked out of every loss
