"""DeepSpeed on CPU through `accelerate launch`, 2 processes, real GRPO steps on the offline tiny model.

ZeRO-3 (configs/accelerate/zero3.yaml as shipped, zero3_init_flag on) and LoRA under ZeRO-2 (what
configs/recipes/qwen3_4b_agg_lora.yaml prescribes). ZeRO-2 full fine-tuning is tests/test_training.py's
test_deepspeed_zero2. DeepSpeed JIT-builds a CPU op on first use (~50 s); .cache/torch_extensions keeps it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import REPO, SCRIPT, _check_two_ranks, smoke_argv, training_rows, write_parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ds_rows(tmp_path_factory) -> Path:
    return write_parquet(training_rows(), tmp_path_factory.mktemp("rows") / "train.parquet")


def _deepspeed(tmp_path, config: str, model_dir: str, rows: Path, *extra: str) -> Path:
    """`accelerate launch --config_file configs/accelerate/CONFIG --num_processes 2` of the smoke recipe, 2 steps."""
    pytest.importorskip("deepspeed")
    cache = REPO / ".cache" / "torch_extensions"  # shared with test_deepspeed_zero2: the op is built once
    cache.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / config), "--num_processes", "2", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(SCRIPT),
               *map(str, smoke_argv(model_dir, out, "--dataset_files", rows, "--max_steps", "2",
                                    "--save_strategy", "no", *extra))]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(cache)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_deepspeed_zero3(tiny_model_dir, ds_rows, tmp_path):
    out = _deepspeed(tmp_path, "zero3.yaml", tiny_model_dir, ds_rows)
    record = _check_two_ranks(out)
    assert (record["distributed_type"], record["zero_stage"], record["num_processes"]) == ("DEEPSPEED", 3, 2)
    # zero3_save_16bit_model: the saved model is whole (gathered from the shards) and it moved from the start.
    trained, start = _weights(out / "model.safetensors"), _weights(Path(tiny_model_dir) / "model.safetensors")
    assert set(trained) == set(start)
    assert all(trained[k].shape == start[k].shape for k in start)
    assert any(not trained[k].float().equal(start[k].float()) for k in start)


def test_deepspeed_zero2_lora(tiny_model_dir, ds_rows, tmp_path):
    out = _deepspeed(tmp_path, "zero2.yaml", tiny_model_dir, ds_rows, "--use_peft", "true", "--lora_r", "4",
                     "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "1e-2")  # fmt: skip
    record = _check_two_ranks(out)
    assert (record["distributed_type"], record["zero_stage"], record["num_processes"]) == ("DEEPSPEED", 2, 2)
    assert record["model_args"]["use_peft"] is True
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = _weights(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices start at 0 and must have moved"
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
