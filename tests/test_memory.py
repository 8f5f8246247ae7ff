"""The recipe's GPU memory arithmetic (rsa.memory) against the card sizes its header states."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from rsa.memory import QWEN3_4B, colocate_sizing, smallest_utilization

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "recipes" / "qwen3_4b_agg.yaml"


def _header(recipe: Path = RECIPE) -> str:
    """The recipe's comment lines without their `#`, as one line of words."""
    return " ".join(
        " ".join(line.lstrip("#").split()) for line in recipe.read_text().splitlines() if line.startswith("#")
    )


def test_qwen3_4b_shape_gives_its_known_size():
    assert round(QWEN3_4B.parameters() / 1e9, 2) == 4.02  # the model card's 4.0B parameters
    assert QWEN3_4B.kv_bytes_per_token() == 144 * 1024  # 2 x 36 layers x 8 KV heads x 128 dims x 2 bytes


def test_recipe_fits_the_card_it_states_and_its_header_quotes_the_arithmetic():
    recipe = yaml.safe_load(RECIPE.read_text())
    header = _header()
    utilization, context = recipe["vllm_gpu_memory_utilization"], recipe["vllm_max_model_length"]
    assert recipe["vllm_enable_sleep_mode"] is True  # the trainer's passes run while vLLM's memory is freed
    card = float(re.search(r"80 GB class .*?card_gib (\d+\.\d+)", header).group(1))
    sizing = colocate_sizing(QWEN3_4B, card, utilization, context, processes=8)
    assert sizing.fits, sizing
    for quoted in (f"{utilization} x {card} GiB = {sizing.vllm_gib:.1f} GiB", f"{sizing.kv_per_sequence_gib:.2f} GiB",
                   f"KV cache {sizing.kv_cache_gib:.1f} GiB", f"{sizing.full_sequences:.1f} full-length sequences",
                   f"trainer keeps {sizing.trainer_gib:.1f} GiB", f"{context:,}-token"):  # fmt: skip
        assert quoted in header, quoted


def test_40gb_cards_need_the_override_the_header_states():
    recipe = yaml.safe_load(RECIPE.read_text())
    header = _header()
    context = recipe["vllm_max_model_length"]
    match = re.search(r"40 GB cards \(card_gib (\d+\.\d+)\).*?--vllm_gpu_memory_utilization (0\.\d+)", header)
    card, override = float(match.group(1)), float(match.group(2))
    shipped = colocate_sizing(QWEN3_4B, card, recipe["vllm_gpu_memory_utilization"], context, processes=8)
    assert shipped.full_sequences < 1 and not shipped.fits  # vLLM would refuse to start
    assert f"KV cache gets {shipped.kv_cache_gib:.1f} GiB" in header
    fixed = colocate_sizing(QWEN3_4B, card, override, context, processes=8)
    assert fixed.fits and override >= smallest_utilization(QWEN3_4B, card, context, sequences=2)
    assert f"{fixed.full_sequences:.1f} sequences" in header and f"vLLM {fixed.vllm_gib:.1f} + trainer" in header


def test_standard_recipe_header_quotes_its_shorter_context():
    recipe_file = REPO / "configs" / "recipes" / "qwen3_4b_standard.yaml"
    recipe = yaml.safe_load(recipe_file.read_text())
    header = _header(recipe_file)
    utilization, context = recipe["vllm_gpu_memory_utilization"], recipe["vllm_max_model_length"]
    small = colocate_sizing(QWEN3_4B, 40.0, utilization, context, processes=8)
    large = colocate_sizing(QWEN3_4B, 79.6, utilization, context, processes=8)
    assert small.fits and large.fits
    for quoted in (f"{context:,} tokens a sequence needs {small.kv_per_sequence_gib:.2f} GiB",
                   f"KV cache {small.kv_cache_gib:.1f} GiB, {small.full_sequences:.1f} sequences",
                   f"80 GB: {large.full_sequences:.1f}"):  # fmt: skip
        assert quoted in header, quoted
