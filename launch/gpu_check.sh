#!/usr/bin/env bash
# GPU check of the training stack: the smoke recipe (configs/recipes/cpu_smoke.yaml) on ONE GPU with bf16
# (use_cpu false) through `accelerate launch --num_processes 1`, 3 GRPO steps per config:
#   zero2, zero3              DeepSpeed ZeRO-2 / ZeRO-3, full fine-tuning, HF generation
#   zero2-lora, zero3-lora    the same with a LoRA adapter (the LoRA recipe's setting is zero2)
#   zero3-vllm, zero2-lora-vllm   vLLM colocated rollouts (only when `import vllm` works in the image): ZeRO-3
#                             weights gathered into vLLM, and a LoRA adapter merged into vLLM
# then the `gpu`-marked tests (`pytest -m gpu tests/test_gpu.py`: bf16 steps, ZeRO-3 gathering for generation,
# vLLM colocate) when pytest is importable. Prints one line per config and one for the tests:
#   PASS zero2: 3/3 steps, last loss ..., reward ..., DEEPSPEED ZeRO-2, bf16, 41 s
#   SKIP zero3-vllm: vllm is not importable here
#   PASS gpu tests: 5 passed
# and exits non-zero when any config or test fails. Expected total: about 5-10 minutes.
# CONFIGS="zero2 zero3-vllm" runs only those configs; GPU_TESTS=0 skips the pytest part.
#
#   bash launch/gpu_check.sh
#
# Assumes a CUDA build of torch (and transformers, accelerate) is installed. When a .whl/ folder exists in the
# repository, every wheel in it is installed offline as it is (`pip install --no-index --no-deps --target
# $OUT/site .whl/*.whl`, put first on PYTHONPATH; see docs/TRAINING.md for the download list); torch itself is
# never reinstalled. Nothing is downloaded: the tiny model is built here.
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
PY

lora=(--use_peft true --lora_r 8 --lora_alpha 16 --lora_target_modules q_proj v_proj)
vllm=(--use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.3)
declare -A config_args=(
  [zero2]="" [zero3]="" [zero2-lora]="${lora[*]}" [zero3-lora]="${lora[*]}"
  [zero3-vllm]="${vllm[*]}" [zero2-lora-vllm]="${lora[*]} ${vllm[*]}"
)
read -r -a selected <<< "${CONFIGS:-zero2 zero3 zero2-lora zero3-lora zero3-vllm zero2-lora-vllm}"
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
  out="$work/$name"
  rm -rf "$out"
  start=$SECONDS
  read -r -a extra <<< "${config_args[$name]}"
  timeout "$per_config_timeout" "$python" -m accelerate.commands.launch \
      --config_file "configs/accelerate/${name%%-*}.yaml" --num_processes 1 --num_machines 1 --mixed_precision bf16 \
      --dynamo_backend no train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml \
      --model_name_or_path "$work/tiny-model" --output_dir "$out" --use_cpu false --bf16 true \
      --dataset_files "$work/rows.jsonl" --problems "" --max_steps "$steps" --save_strategy no "${extra[@]}" \
      > "$work/$name.log" 2>&1
  rc=$?
  line=$("$python" - "$out" "$rc" "$steps" "$name" "$((SECONDS - start))" <<'PY'
import json, math, sys
from pathlib import Path
out, rc, steps, name, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
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
