"""The toy world's evidence report: mean and spread per arm and step, per difficulty, paired bootstrap
comparisons, the paper's claims in words, and diagnostics of what the populations copy and derive.

Input: `rsa eval` run directories keyed by (arm, training seed, RSA seed); the base arm has training seed None.
Everything is read back from the run directories (per-problem files), so the report can be rebuilt at any time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rsa.jsonl import read_jsonl
from rsa.stats import fmt, paired_bootstrap, spread
from rsa.toyworld.diagnostics import run_diagnostics
from rsa.toyworld.worlds import world_of_task

ARM_NAMES = {
    "base": "base",
    "standard": "standard RL",
    "offline": "agg-aware RL (offline, paper)",
    "onpolicy": "agg-aware RL (on-policy)",
    "cotrained": "agg-aware RL (co-trained)",
}
#: the aggregation-aware arms, each compared with standard RL
AGGREGATION_ARMS = ("offline", "onpolicy", "cotrained")
RunKey = tuple[str, "int | None", int]


def load_run(run_dir: Path) -> dict:
    """A run's problem order, difficulties, per-step per-problem Pass@1 / Pass@N / majority, and metrics lines."""
    problems = read_jsonl(run_dir / "problems.jsonl")
    order = [str(p["id"]) for p in problems]
    steps = {}
    for path in sorted((run_dir / "per_problem").glob("step_*.jsonl")):
        records = {str(r["problem_id"]): r for r in read_jsonl(path)}
        steps[int(path.stem.split("_")[1])] = {
            key: np.array([records[pid][key] for pid in order], dtype=float)
            for key in ("pass_at_1", "pass_at_n", "majority")
        }
    return {
        "order": order,
        "difficulty": [world_of_task(p.get("task", "toy")).difficulty_of(p["question"]) for p in problems],
        "world": world_of_task(problems[0].get("task", "toy")).name,
        "steps": steps,
    }


def _matrix(loaded: Mapping[RunKey, dict], arm: str, step: int, key: str = "pass_at_1") -> np.ndarray:
    rows = [run["steps"][step][key] for (a, _, _), run in sorted(loaded.items(), key=lambda x: str(x[0])) if a == arm]
    return np.stack(rows)


def summarise_runs(runs: Mapping[RunKey, Path], extra_lines: list[str] | None = None, resamples: int = 2000) -> str:
    """The markdown report over `runs` (see the module docstring)."""
    loaded = {key: load_run(Path(path)) for key, path in runs.items()}
    arms = [a for a in ARM_NAMES if any(k[0] == a for k in loaded)]
    first = next(iter(loaded.values()))
    last_step = min(max(run["steps"]) for run in loaded.values())
    steps = list(range(1, last_step + 1))
    train_seeds = sorted({k[1] for k in loaded if k[1] is not None})
    rsa_seeds = sorted({k[2] for k in loaded})
    lines = [
        f"# Toy world results ({len(first['order'])} held-out problems; training seeds {train_seeds or '-'}; "
        f"RSA seeds {rsa_seeds}; mean ± std over runs)",
        "",
        "## Pass@1 per RSA step",
        "",
        "| arm | runs | " + " | ".join(f"step {s}" for s in steps) + f" | Pass@N step {last_step} | "
        f"majority step {last_step} |",
        "|---|---|" + "---|" * (len(steps) + 2),
    ]
    for arm in arms:
        runs_of_arm = _matrix(loaded, arm, 1).shape[0]
        cells = [str(spread(_matrix(loaded, arm, s).mean(axis=1))) for s in steps]
        pass_n = spread(_matrix(loaded, arm, last_step, "pass_at_n").mean(axis=1))
        majority = spread(_matrix(loaded, arm, last_step, "majority").mean(axis=1))
        lines.append(f"| {ARM_NAMES[arm]} | {runs_of_arm} | " + " | ".join(cells) + f" | {pass_n} | {majority} |")

    if first["world"] == "add":
        difficulties = sorted(set(first["difficulty"]), key=lambda d: (int(d.split("x")[1]), int(d.split("x")[0])))
        legend = "terms x digits"
    else:
        difficulties = sorted(set(first["difficulty"]), key=lambda d: int(d[1:]))
        legend = "numbers to search"
    lines += [
        "",
        f"## Pass@1 per difficulty ({legend}), step 1 -> step {last_step}",
        "",
        "| arm | " + " | ".join(difficulties) + " |",
        "|---|" + "---|" * len(difficulties),
    ]
    mask = {d: np.array([x == d for x in first["difficulty"]]) for d in difficulties}
    for arm in arms:
        one, last = _matrix(loaded, arm, 1), _matrix(loaded, arm, last_step)
        cells = [f"{one[:, mask[d]].mean():.3f} -> {last[:, mask[d]].mean():.3f}" for d in difficulties]
        lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + " |")

    comparisons = []
    lines += [
        "",
        f"## Paired comparisons (difference of mean Pass@1, {int(0.95 * 100)}% bootstrap interval over runs and "
        "problems)",
        "",
        "| comparison | difference | interval | verdict |",
        "|---|---|---|---|",
    ]
    for arm in arms:
        c = paired_bootstrap(_matrix(loaded, arm, 1), _matrix(loaded, arm, last_step), resamples=resamples)
        comparisons.append((f"{arm}: step {last_step} vs step 1", arm, "rsa", c))
    if "standard" in arms:
        std_last = _matrix(loaded, "standard", last_step)
        for arm in AGGREGATION_ARMS:
            if arm in arms:
                other = _matrix(loaded, arm, last_step)
                c = paired_bootstrap(
                    std_last, other, resamples=resamples, pair_runs=other.shape[0] == std_last.shape[0]
                )
                comparisons.append((f"{arm} vs standard RL at step {last_step}", arm, "vs-standard", c))
        if "base" in arms:  # the paper's observation: standard RL can leave RSA no better than on the base
            base_last = _matrix(loaded, "base", last_step)
            c = paired_bootstrap(base_last, std_last, resamples=resamples, pair_runs=False)
            comparisons.append((f"standard RL vs base at step {last_step}", "standard", "vs-base", c))
    for name, _, _, c in comparisons:
        lines.append(f"| {name} | {c.difference:+.3f} | [{c.low:+.3f}, {c.high:+.3f}] | {c.verdict} |")

    lines += ["", "## The paper's claims in this run", ""]
    by = {(arm, kind): c for _, arm, kind, c in comparisons}
    base_rsa = by.get(("base", "rsa"))
    if base_rsa is not None:
        held = {"better": "HELD", "worse": "FAILED (RSA lowered it)", "unclear": "NOT SHOWN (interval covers 0)"}
        lines.append(
            f"- RSA raises a base model's Pass@1 over the steps: {held[base_rsa.verdict]} "
            f"(base step {last_step} - step 1 = {base_rsa})."
        )
    for arm in AGGREGATION_ARMS:
        c = by.get((arm, "vs-standard"))
        if c is None:
            continue
        held = {"better": "HELD", "worse": "FAILED (standard RL is better)", "unclear": "NOT SHOWN (interval covers 0)"}
        lines.append(
            f"- {ARM_NAMES[arm]} beats standard RL under RSA at step {last_step}: {held[c.verdict]} (difference {c})."
        )

    lines += [
        "",
        "## Diagnostics (all runs pooled): validity (every line right) at step 1 and at the last step; at step 2 (the "
        "first aggregation) the share reproducing a candidate and, where a valid candidate exists, the share "
        "reproducing a valid one",
        "",
        "| arm | valid step 1 | valid step 2 | valid last | exact copy step 2 | copies a valid candidate step 2 |",
        "|---|---|---|---|---|---|",
    ]
    diagnostics = {arm: [run_diagnostics(Path(runs[key])) for key in runs if key[0] == arm] for arm in arms}

    def mean_of(arm: str, step: int, field: str) -> float | None:
        values = [d[step - 1].get(field) for d in diagnostics[arm] if len(d) >= step]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    for arm in arms:
        lines.append(
            f"| {ARM_NAMES[arm]} | {fmt(mean_of(arm, 1, 'valid'))} | {fmt(mean_of(arm, 2, 'valid'))} | "
            f"{fmt(mean_of(arm, last_step, 'valid'))} | {fmt(mean_of(arm, 2, 'exact_copy'))} | "
            f"{fmt(mean_of(arm, 2, 'copies_valid_when_possible'))} |"
        )
    lines += [
        "",
        "## Mechanism (all runs pooled): coverage of the step-1 population (Pass@N, distinct correct answers per "
        "problem); at step 2, the share of aggregations whose answer is none of their candidates' (solving anew "
        "instead of aggregating) and, where outputs check candidates, the share that check and the share of right "
        "check verdicts",
        "",
        "| arm | Pass@N step 1 | distinct correct step 1 | answers none of its candidates step 2 | checks step 2 | "
        "right verdicts step 2 |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        pass_n = spread(_matrix(loaded, arm, 1, "pass_at_n").mean(axis=1))
        lines.append(
            f"| {ARM_NAMES[arm]} | {pass_n} | {fmt(mean_of(arm, 1, 'distinct_correct'))} | "
            f"{fmt(mean_of(arm, 2, 'resolves'))} | {fmt(mean_of(arm, 2, 'checking'))} | "
            f"{fmt(mean_of(arm, 2, 'verdicts_right'))} |"
        )
    if extra_lines:
        lines += ["", *extra_lines]
    return "\n".join(lines) + "\n"
