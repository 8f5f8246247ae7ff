#!/usr/bin/env bash
# GPU check of the training stack: the smoke recipe (configs/recipes/cpu_smoke.yaml) with bf16 (use_cpu false)
# through `accelerate launch`, 3 GRPO steps per config, one process unless said otherwise:
#   zero2, zero3              DeepSpeed ZeRO-2 / ZeRO-3, full fine-tuning, HF generation
#   zero2-lora, zero3-lora    the same with a LoRA adapter (the LoRA recipe's setting is zero2)
#   zero3-vllm, zero2-lora-vllm   vLLM colocated rollouts (only when `import vllm` works in the image): ZeRO-3
#                             weights gathered into vLLM, and a LoRA adapter merged into vLLM
#   zero3-vllm-sleep-onpolicy vLLM colocated with sleep mode on (the recipes' setting) and on-policy aggregation
#                             (on_policy_aggregation 0.5, K 2-3): candidate and completion generation in one
#                             rollout, one weight load per step
#   zero3-vllm-sleep-2proc    the same on 2 processes (2 GPUs; skipped with fewer): equal generation calls on
#                             every process, ZeRO-3 gathers, sleep/wake in step on both
#   zero3-vllm-long           prompts near the context limit: vllm_max_model_length 1024, completions of 256,
#                             an offline aggregation row whose prompt fills the rest, and on-policy K=4 prompts
#                             that must be fitted (candidates shortened) to the engine's limit
#   memory-4b                 a random model of Qwen3-4B's shape (bf16, ~8 GB written to $OUT) in vLLM at the
#                             recipe's settings (gpu_memory_utilization 0.35, max_model_len 43,008, sleep mode):
#                             the KV cache vLLM reserved next to rsa.memory's prediction for this card, one
#                             prompt of 34,816 tokens (43,008 - 8,192) generated, then sleep and wake-up
# then the `gpu`-marked tests (`pytest -m gpu tests/test_gpu.py`: bf16 steps, ZeRO-3 gathering for generation,
# vLLM colocate) when pytest is importable. Prints one line per config and one for the tests:
#   PASS zero2: 3/3 steps, last loss ..., reward ..., DEEPSPEED ZeRO-2, bf16, 41 s
#   SKIP zero3-vllm: vllm is not importable here
#   PASS gpu tests: 5 passed
# and exits non-zero when any config or test fails. Expected total: about 5-10 minutes.
# CONFIGS="zero2 zero3-vllm" runs only those configs; GPU_TESTS=0 skips the pytest part. Expected total with
# every config: about 15-20 minutes (memory-4b writes and loads an 8 GB model).
#
#   bash launch/gpu_check.sh
#
# Assumes a CUDA build of torch (and transformers, accelerate) is installed. When a .whl/ folder exists in the
# repository, every wheel in it is installed offline as it is (`pip install --no-index --no-deps --target
# $OUT/site .whl/*.whl`, put first on PYTHONPATH; `bash launch/gpu_wheels.sh` downloads them at the versions
# of constraints/gpu.lock); torch itself is never reinstalled. Nothing is downloaded: the tiny model is built here.
# Logs and outputs go to $OUT (the device runner's folder) or /tmp/rsa-gpu-check.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
work="${OUT:-/tmp/rsa-gpu-check}"
steps=3
per_config_timeout="${CONFIG_TIMEOUT:-300}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$work/torch_extensions}"
export HF_DATASETS_CACHE="$work/hf_datasets_cache"
export WANDB_DISABLED=true
export PIP_BREAK_SYSTEM_PACKAGES=1  # images with an "externally managed" system Python
export TRL_EXPERIMENTAL_SILENCE=1   # rollout_func (on-policy aggregation) is experimental in TRL 1.16
source "$repo/launch/alloc_conf.sh"
clear_expandable_segments           # expandable segments break vLLM's sleep mode
num_gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"

echo "== environment" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2 >&2
if [ -d .whl ]; then
  # Wheels carried to a machine whose image already has CUDA torch, transformers and accelerate:
  # installed as they are (no resolution, no downloads) into a private folder put first on the path.
  echo "== installing the carried wheels from .whl/ (offline, --no-deps)" >&2
  "$python" -m pip install --no-index --no-deps --no-compile --quiet --disable-pip-version-check \
      --target "$work/site" .whl/*.whl > "$work/pip.log" 2>&1 \
    || { echo "FAIL install: pip could not install .whl/ (tail of $work/pip.log below)"; tail -20 "$work/pip.log"; exit 1; }
  export PYTHONPATH="$work/site:$PYTHONPATH"
fi
if ! "$python" - <<'PY' >&2
import sys
import torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
import accelerate, datasets, deepspeed, peft, transformers, trl
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}; transformers {transformers.__version__}, "
      f"trl {trl.__version__}, accelerate {accelerate.__version__}, deepspeed {deepspeed.__version__}, "
      f"peft {peft.__version__}, datasets {datasets.__version__}")
PY
then
  echo "FAIL environment: CUDA torch or a training library is missing (see above)"
  exit 1
fi

echo "== tiny model and training rows" >&2
"$python" - "$work" <<'PY' >&2 || { echo "FAIL setup: could not build the tiny model / rows"; exit 1; }
import json, sys
from pathlib import Path
from rsa.tiny import build_tiny_model
work = Path(sys.argv[1])
build_tiny_model(work / "tiny-model")
# Plain math prompts in the training-row layout (docs/FORMATS.md); scored by the real math reward.
with open(work / "rows.jsonl", "w") as fh:
    for a in range(16):
        question = f"What is {a} + {a + 3}? Please reason step by step, and put your final answer within \\boxed{{}}."
        fh.write(json.dumps({"prompt": [{"role": "user", "content": question}], "task": "math",
                             "answer": str(2 * a + 3), "kind": "plain", "problem_id": f"add-{a}"}) + "\n")
# The same rows plus one offline aggregation row whose templated prompt fills the context of zero3-vllm-long
# (vllm_max_model_length 1024 - max_completion_length 256 = 768 tokens) to within 32 tokens.
from transformers import AutoTokenizer
from rsa.tasks import Problem, get_task
tokenizer = AutoTokenizer.from_pretrained(str(work / "tiny-model"))
task, problem = get_task("math"), Problem("long-0", "math", "What is 1 + 1? Put the answer in \\boxed{}.", "2")
def tokens(conversation):
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
words = 1
while tokens(task.aggregation_prompt(problem, [" ".join(["two"] * (words + 1))] * 4)) <= 768:
    words += 1
conversation = task.aggregation_prompt(problem, [" ".join(["two"] * words)] * 4)
assert 736 <= tokens(conversation) <= 768, tokens(conversation)
with open(work / "rows.jsonl") as src, open(work / "rows_long.jsonl", "w") as fh:
    fh.write(src.read())
    fh.write(json.dumps({"prompt": conversation, "task": "math", "answer": "2", "kind": "aggregate",
                         "problem_id": "long-0"}) + "\n")
PY

# memory_4b OUT: the memory-4b check (see the header); prints one PASS/FAIL line, logs to $work/memory-4b.log.
memory_4b() {
  local out="$1"
  mkdir -p "$out"
  if [ "$has_vllm" != 1 ]; then echo "SKIP memory-4b: vllm is not importable here"; return 0; fi
  timeout "$per_config_timeout" "$python" - "$work" "$out" > "$work/memory-4b.log" 2>&1 <<'PY' || { echo "FAIL memory-4b: could not write the random 4B model (see $work/memory-4b.log)"; return 1; }
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, Qwen3Config
from rsa.memory import QWEN3_4B as s
work, out = Path(sys.argv[1]), Path(sys.argv[2])
config = Qwen3Config(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                     num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                     head_dim=s.head_dim, tie_word_embeddings=s.tied_embeddings, max_position_embeddings=262144,
                     rope_theta=5000000.0, dtype="bfloat16")
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
count = sum(p.numel() for p in model.parameters())
assert count == s.parameters(), f"rsa.memory counts {s.parameters()} parameters, the model has {count}"
model.save_pretrained(out / "model")  # no tokenizer: vLLM gets token ids (skip_tokenizer_init)
print(f"wrote {count:,} parameters")
PY
  timeout "$per_config_timeout" env VLLM_ENABLE_V1_MULTIPROCESSING=0 "$python" - "$out" >> "$work/memory-4b.log" 2>&1 <<'PY' \
    || { echo "FAIL memory-4b: vLLM at the recipe's settings failed (see $work/memory-4b.log)"; return 1; }
import sys
from pathlib import Path
import torch
from vllm import LLM, SamplingParams
from rsa.memory import GIB, QWEN3_4B, colocate_sizing, describe
out = Path(sys.argv[1])
utilization, context, completion = 0.35, 43008, 8192  # configs/recipes/qwen3_4b_agg.yaml
card = torch.cuda.mem_get_info()[1] / GIB
# TRL 1.16's colocate settings: max_num_batched_tokens 4096, max_num_seqs = per_device 1 x steps_per_generation 128
llm = LLM(model=str(out / "model"), gpu_memory_utilization=utilization, max_model_len=context, skip_tokenizer_init=True,
          enable_sleep_mode=True, max_num_batched_tokens=4096, max_num_seqs=128, seed=0)
cache = llm.llm_engine.vllm_config.cache_config
kv_tokens = cache.num_gpu_blocks * cache.block_size
kv_gib = kv_tokens * QWEN3_4B.kv_bytes_per_token() / GIB
predicted = colocate_sizing(QWEN3_4B, card, utilization, context, processes=8)
print("predicted: " + describe(predicted, utilization, context))
long_prompt = [(7 * i) % 1000 + 3 for i in range(context - completion)]
result = llm.generate([{"prompt_token_ids": long_prompt}], SamplingParams(max_tokens=16, detokenize=False),
                      use_tqdm=False)
generated = len(result[0].outputs[0].token_ids)
llm.sleep(level=2)
asleep = torch.cuda.mem_get_info()[0] / GIB
llm.wake_up()
ok = kv_tokens >= context and generated > 0
line = (f"{'PASS' if ok else 'FAIL'} memory-4b: card {card:.1f} GiB; vLLM reserved a KV cache of {kv_gib:.1f} GiB "
      f"({kv_tokens:,} tokens = {kv_tokens / context:.1f} sequences of {context:,}), rsa.memory predicted "
      f"{predicted.kv_cache_gib:.1f} GiB ({predicted.full_sequences:.1f}); a {len(long_prompt):,}-token prompt "
      f"generated {generated} tokens; {asleep:.1f} GiB free while asleep")
(out / "result.txt").write_text(line + "\n")  # the log's last line may be vLLM's shutdown message
print(line)
PY
  cat "$out/result.txt"
}

lora=(--use_peft true --lora_r 8 --lora_alpha 16 --lora_target_modules q_proj v_proj)
vllm=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.3)
sleep_onpolicy=(--vllm_enable_sleep_mode true --on_policy_aggregation 0.5 --on_policy_k 2-3)
long=(--vllm_enable_sleep_mode true --vllm_max_model_length 1024 --max_completion_length 256
      --on_policy_aggregation 1.0 --on_policy_k 4 --dataset_files "$work/rows_long.jsonl")
declare -A config_args=(
  [zero2]="" [zero3]="" [zero2-lora]="${lora[*]}" [zero3-lora]="${lora[*]}"
  [zero3-vllm]="${vllm[*]}" [zero2-lora-vllm]="${lora[*]} ${vllm[*]}"
  [zero3-vllm-sleep-onpolicy]="${vllm[*]} ${sleep_onpolicy[*]}"
  [zero3-vllm-sleep-2proc]="${vllm[*]} ${sleep_onpolicy[*]}"
  [zero3-vllm-long]="${vllm[*]} ${long[*]}"
  [memory-4b]=""
)
declare -A config_procs=([zero3-vllm-sleep-2proc]=2)
read -r -a selected <<< "${CONFIGS:-zero2 zero3 zero2-lora zero3-lora zero3-vllm zero2-lora-vllm zero3-vllm-sleep-onpolicy zero3-vllm-sleep-2proc zero3-vllm-long memory-4b}"
has_vllm=0
"$python" -c "import vllm" > "$work/vllm_import.log" 2>&1 && has_vllm=1

status=0
summaries=()
for name in "${selected[@]}"; do
  [ -n "${config_args[$name]+set}" ] || { echo "unknown config $name (CONFIGS)"; exit 2; }
  if [[ "$name" == *vllm* ]] && [ "$has_vllm" != 1 ]; then
    summaries+=("SKIP $name: vllm is not importable here ($(tail -1 "$work/vllm_import.log"))")
    continue
  fi
  procs="${config_procs[$name]:-1}"
  if ((procs > num_gpus)); then
    summaries+=("SKIP $name: needs $procs GPUs, this machine has $num_gpus")
    continue
  fi
  out="$work/$name"
  rm -rf "$out"
  start=$SECONDS
  if [ "$name" = memory-4b ]; then
    line="$(memory_4b "$out")" || status=1
    [[ "$line" == PASS* ]] || { status=1; echo "---- tail of $work/memory-4b.log" >&2; tail -25 "$work/memory-4b.log" >&2; }
    summaries+=("$line ($((SECONDS - start)) s)")
    rm -rf "$out/model"  # 8 GB
    continue
  fi
  read -r -a extra <<< "${config_args[$name]}"
  timeout "$per_config_timeout" "$python" -m accelerate.commands.launch \
      --config_file "configs/accelerate/${name%%-*}.yaml" --num_processes "$procs" --num_machines 1 --mixed_precision bf16 \
      --dynamo_backend no train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml \
      --model_name_or_path "$work/tiny-model" --output_dir "$out" --use_cpu false --bf16 true \
      --dataset_files "$work/rows.jsonl" --problems "" --max_steps "$steps" --save_strategy no "${extra[@]}" \
      > "$work/$name.log" 2>&1
  rc=$?
  line=$("$python" - "$out" "$rc" "$steps" "$name" "$((SECONDS - start))" "$procs" <<'PY'
import json, math, sys
from pathlib import Path
out, rc, steps, name, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
procs = int(sys.argv[6])
state_file, record_file = out / "trainer_state.json", out / "rsa_training.json"
state = json.loads(state_file.read_text()) if state_file.is_file() else {}
record = json.loads(record_file.read_text()) if record_file.is_file() else {}
done = state.get("global_step", 0)
logs = [h for h in state.get("log_history", []) if "loss" in h]
loss = logs[-1]["loss"] if logs else float("nan")
reward = logs[-1].get("reward", float("nan")) if logs else float("nan")
kind = f"{record.get('distributed_type', '?')} ZeRO-{record.get('zero_stage', '?')}"
training = record.get("training_args") or {}
precision = "bf16" if training.get("bf16") else "fp32"
problems = []
if not (rc == 0 and done == steps and math.isfinite(loss)):
    problems.append(f"exit code {rc}{', timed out' if rc == 124 else ''}")
if kind != f"DEEPSPEED ZeRO-{name[4]}" or precision != "bf16":
    problems.append(f"expected DEEPSPEED ZeRO-{name[4]}, bf16")
notes = []
if "lora" in name:
    notes.append("LoRA adapter")
    if not (out / "adapter_model.safetensors").is_file():
        problems.append("no adapter_model.safetensors")
if "vllm" in name:
    diffs = [h.get("sampling/sampling_logp_difference/mean", float("nan")) for h in logs]
    notes.append(f"vLLM colocate, sampling logp difference {max(diffs, default=float('nan')):.3g}")
    if not training.get("use_vllm") or not diffs or not max(diffs) < 0.1:
        problems.append("vLLM rollouts missing or their logprobs drift from the trainer's (stale weights?)")
if "sleep" in name or "long" in name:
    notes.append("sleep mode")
    if not training.get("vllm_enable_sleep_mode"):
        problems.append("vllm_enable_sleep_mode is off")
if "onpolicy" in name or "long" in name:
    groups = sum(h.get("onpolicy/aggregation_groups", 0) for h in logs)
    notes.append(f"on-policy aggregation groups {groups:g}")
    if not groups:
        problems.append("no on-policy aggregation group in any step")
if record.get("num_processes", procs) != procs:
    problems.append(f"ran on {record.get('num_processes')} processes, expected {procs}")
if procs > 1:
    notes.append(f"{procs} processes")
    ranks = set()
    log = out / "completions.jsonl"
    for raw in log.read_text().splitlines() if log.is_file() else []:
        ranks.add(json.loads(raw).get("rank"))
    if ranks != set(range(procs)):
        problems.append(f"completions of ranks {sorted(ranks)} logged, expected {list(range(procs))}")
if "long" in name:
    cut = sum(h.get("onpolicy/truncated_candidates", 0) for h in logs)
    notes.append(f"candidates shortened to fit 1024 tokens: {cut:g}")
    if not cut:
        problems.append("no on-policy candidate was shortened: the near-limit case did not happen")
why = f" ({'; '.join(problems)})" if problems else ""
print(f"{'FAIL' if problems else 'PASS'} {name}: {done}/{steps} steps, last loss {loss:.4g}, reward {reward:.4g}, "
      f"{kind}, {precision}{''.join(', ' + n for n in notes)}, {seconds} s{why}")
PY
)
  [[ "$line" == PASS* ]] || { status=1; echo "---- tail of $work/$name.log" >&2; tail -25 "$work/$name.log" >&2; }
  summaries+=("$line")
done

if [ "${GPU_TESTS:-1}" = 1 ]; then
  if "$python" -c "import pytest" 2>/dev/null; then
    echo "== gpu-marked tests (pytest -m gpu tests/test_gpu.py)" >&2
    "$python" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts="" > "$work/gpu_tests.log" 2>&1
    rc=$?
    result="$(tail -1 "$work/gpu_tests.log" | tr -d '=' | xargs)"
    if ((rc == 0)) && [[ "$result" == *passed* ]]; then  # all skipped on a CUDA machine is a failure too
      summaries+=("PASS gpu tests: $result")
    else
      status=1
      summaries+=("FAIL gpu tests: $result (exit code $rc; log $work/gpu_tests.log)")
      tail -40 "$work/gpu_tests.log" >&2
    fi
  else
    summaries+=("SKIP gpu tests: pytest is not importable (add its wheel to .whl/)")
  fi
fi
echo "== summary"
printf '%s\n' "${summaries[@]}"
exit "$status"
