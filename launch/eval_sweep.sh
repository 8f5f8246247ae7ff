#!/usr/bin/env bash
# Evaluate every saved checkpoint of a training run with RSA, one run folder per checkpoint, then one report.
#
#   bash launch/eval_sweep.sh OUTPUT_DIR [rsa eval options ...]
#   bash launch/eval_sweep.sh outputs/qwen3_4b_agg --dataset hmmt25 --population 16 --k 4 --steps 10 --seed 1234
#
# For each OUTPUT_DIR/checkpoint-*/ (in step order) this runs `rsa eval --model CHECKPOINT --out RUNS_DIR/checkpoint-N`
# with the given options, then `rsa report` over all run folders into RUNS_DIR/report (table + plots).
# Re-running the sweep resumes interrupted runs and leaves finished ones as they are (`--resume_if_exists`), so it can
# follow a training run that is still saving checkpoints; a larger --steps extends the finished runs. LoRA checkpoints (adapter only) are skipped: merge them first.
# Variables [defaults]:
#   RUNS_DIR    [runs/sweep-<basename of OUTPUT_DIR>] where the run folders and the report go
#   BASE_MODEL  [unset] also evaluate this model (the policy before training) as run folder `base`
#   VENV        [.venv] virtual environment holding the `rsa` command
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
output_dir="${1:?usage: $0 OUTPUT_DIR [rsa eval options ...]}"
shift
venv="${VENV:-$repo/.venv}"
rsa="$venv/bin/rsa"
runs_dir="${RUNS_DIR:-runs/sweep-$(basename "$output_dir")}"
[ -d "$output_dir" ] || { echo "$output_dir is not a directory" >&2; exit 2; }
mkdir -p "$runs_dir"

evaluate() {  # NAME MODEL: one run folder: started, resumed when interrupted, a no-op when finished
  local name="$1" model="$2" out="$runs_dir/$1"
  shift 2
  echo "== $name: rsa eval --model $model --out $out --resume_if_exists" >&2
  "$rsa" eval --model "$model" --out "$out" --resume_if_exists "$@"
}

if [ -n "${BASE_MODEL:-}" ]; then
  evaluate base "$BASE_MODEL" "$@"
fi
mapfile -t checkpoints < <(find "$output_dir" -maxdepth 1 -type d -regex '.*/checkpoint-[0-9]+' | sort -V)
if [ ${#checkpoints[@]} -eq 0 ] && [ -z "${BASE_MODEL:-}" ]; then
  echo "no checkpoint-*/ directories in $output_dir" >&2
  exit 2
fi
for checkpoint in "${checkpoints[@]}"; do
  if [ ! -f "$checkpoint/config.json" ]; then
    echo "== $(basename "$checkpoint"): no config.json (a LoRA adapter?); merge it into the base model first" >&2
    continue
  fi
  evaluate "$(basename "$checkpoint")" "$checkpoint" "$@"
done

mapfile -t runs < <(find "$runs_dir" -mindepth 2 -maxdepth 2 -name manifest.json -printf '%h\n' | sort -V)
"$rsa" report "${runs[@]}" --out "$runs_dir/report"
echo "report: $runs_dir/report/report.md" >&2
