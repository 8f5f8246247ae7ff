#!/usr/bin/env bash
# Aggregation-aware GRPO on one node: vLLM colocated inside the training processes (vllm_mode: colocate).
#
#   bash launch/single_node_colocate.sh [RECIPE] [ACCELERATE_CONFIG] [recipe overrides ...]
#   bash launch/single_node_colocate.sh configs/recipes/qwen3_4b_agg.yaml configs/accelerate/zero3.yaml --max_steps 50
#
# Defaults: RECIPE configs/recipes/qwen3_4b_agg.yaml, ACCELERATE_CONFIG configs/accelerate/zero3.yaml.
# Variables: NUM_GPUS (default: all GPUs nvidia-smi lists), VENV (default .venv), TORCH_EXTENSIONS_DIR
# (default .cache/torch_extensions: DeepSpeed's JIT-built ops are reused between runs), DRY_RUN (1: print the
# accelerate command, shell-quoted, on stdout and exit without running it). PYTORCH_CUDA_ALLOC_CONF loses its
# expandable_segments option (launch/alloc_conf.sh: it breaks vLLM's sleep mode). Hardware needs (driver >= 580,
# 80 GB cards, the 40 GB override): the recipe header and docs/TRAINING.md "Hardware".
# The recipe's batch arithmetic assumes 8 GPUs (1 x 8 x 128 = 1024 completions per step); with another count
# pass --gradient_accumulation_steps so that per_device x NUM_GPUS x accumulation = 1024. train/grpo_agg.py
# checks the batch against num_generations before loading the model. Resumes from the last checkpoint-*
# in the recipe's output_dir automatically.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
recipe="${1:-configs/recipes/qwen3_4b_agg.yaml}"
accelerate_config="${2:-configs/accelerate/zero3.yaml}"
shift $(( $# < 2 ? $# : 2 ))
venv="${VENV:-.venv}"
[ -f "$recipe" ] || { echo "recipe $recipe not found (see configs/recipes/)" >&2; exit 2; }
[ -f "$accelerate_config" ] || { echo "accelerate config $accelerate_config not found" >&2; exit 2; }
num_gpus="${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
if [ "$num_gpus" -lt 1 ]; then
  echo "no GPU found: set NUM_GPUS, or on CPU run: python train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml" >&2
  exit 2
fi
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}"
source "$repo/launch/alloc_conf.sh"
clear_expandable_segments
command=("$venv/bin/accelerate" launch --config_file "$accelerate_config" --num_processes "$num_gpus"
         train/grpo_agg.py --config "$recipe" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${command[@]}"; echo
  exit 0
fi
echo "training $recipe on $num_gpus GPU(s) with $accelerate_config" >&2
exec "${command[@]}"
