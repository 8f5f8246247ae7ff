"""Which pre-training makes a toy base that RSA can lift? Pre-trains each variant, measures its gate, runs RSA.

    .venv/bin/python experiments/toy_base_sweep.py --out runs/base-sweep [--world add|pick] [--workers 2] [--problems 192]

For each `PretrainConfig` variant of the world (`VARIANTS` for `add`, `PICK_VARIANTS` for `pick`: the shipped
default and the alternatives docs/TOYWORLD.md discusses): pre-train from scratch (one CPU thread per worker),
measure the base on fresh in-distribution prompts (`rsa.toyworld.diagnostics.measure_base`, K=3, temperature 1), then evaluate base + RSA on the demo's
held-out problems (N=8, K=3, T=5, RSA seed 1234) and read the populations' diagnostics. Prints one markdown
table; every variant's model, gate and run stay under `--out`, and a finished variant is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rsa.toyworld import ToyWorldConfig  # noqa: E402

#: name -> changes to the shipped PretrainConfig
VARIANTS: dict[str, dict] = {
    "default": {},
    "errors 0.04, 1200 steps, 50% agg": {
        "addend_rate": 0.04,
        "chain_rate": 0.04,
        "steps": 1200,
        "aggregation_fraction": 0.5,
    },  # fmt: skip
    "errors 0.01, 1200 steps, 50% agg": {"steps": 1200, "aggregation_fraction": 0.5},
    "errors 0, 1200 steps, 50% agg": {
        "addend_rate": 0.0,
        "chain_rate": 0.0,
        "steps": 1200,
        "aggregation_fraction": 0.5,
    },  # fmt: skip
}
#: name -> changes to the pick world's shipped PretrainConfig (rsa.toyworld.pipeline.PICK_PRETRAIN)
PICK_VARIANTS: dict[str, dict] = {
    "default (checks 0.75 of the time)": {},
    "checks half the time": {"check_prob": 0.5},
}


def run_variant(name: str, changes: dict, out: Path, problems: int, world: str = "add") -> dict:
    """Pre-train, gate and RSA-evaluate one variant under `out`; returns its row (cached in `row.json`)."""
    import torch

    torch.set_num_threads(1)
    from rsa.jsonl import read_jsonl
    from rsa.runs import METRICS
    from rsa.toyworld.diagnostics import measure_base, run_diagnostics
    from rsa.toyworld.pipeline import evaluate, write_problems
    from rsa.toyworld.pretrain import pretrain

    row_file = out / "row.json"
    if row_file.is_file():
        return json.loads(row_file.read_text())
    demo = ToyWorldConfig.full(world)
    config = replace(demo.pretrain, **changes)
    model = out / "model"
    if not (model / "toy_pretrain.json").is_file():
        pretrain(model, config, progress=False)
    info = json.loads((model / "toy_pretrain.json").read_text())
    gate = measure_base(model, config, problems=problems)
    demo.pretrain = config
    _, eval_file = write_problems(out / "data", demo)
    run = evaluate("base", model, eval_file, out / "eval", 1234, demo)
    steps = read_jsonl(run / METRICS)
    diagnostics = run_diagnostics(run)
    row = {
        "variant": name,
        "loss": info["final_loss"],
        "pretrain_s": info.get("wall_s"),  # absent for models pre-trained before it was recorded
        **{key: gate[key] for key in ("plain", "plain_target", "agg", "random_copy", "exact_copy")},
        **{key: gate[key] for key in ("pass_at_n", "verdicts_right", "resolves") if key in gate},
        "rsa_pass_at_1": [s["pass_at_1"] for s in steps],
        "rsa_exact_copy_step2": diagnostics[1].get("exact_copy") if len(diagnostics) > 1 else None,
    }
    row_file.write_text(json.dumps(row) + "\n")
    return row


def main() -> int:
    """Run the sweep and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for every variant's model and runs")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="variants at a time")
    parser.add_argument("--problems", type=int, default=192, help="in-distribution prompts of the gate")
    parser.add_argument("--world", choices=("add", "pick"), default="add", help="toy world to sweep (default add)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(run_variant, name, changes, args.out / f"v{i}", args.problems, args.world)
            for i, (name, changes) in enumerate((PICK_VARIANTS if args.world == "pick" else VARIANTS).items())
        ]
        rows = [f.result() for f in futures]
    print(f"gate: {args.problems} in-distribution problems, K=3, temperature 1; RSA: N=8, K=3, T=5, seed 1234\n")
    coverage = args.world == "pick"  # the pick world's gate also measures coverage and check verdicts
    extra_head = " plain Pass@8 | right verdicts |" if coverage else ""
    print(
        "| variant | loss | plain (targets) | aggregation (random copy) | exact copy |"
        + extra_head
        + " base + RSA Pass@1, steps 1-5 |"
    )
    print("|---|---|---|---|---|---|" + "---|---|" * coverage)
    for r in rows:
        rsa_steps = " ".join(f"{p:.3f}" for p in r["rsa_pass_at_1"])
        extra = f" {r['pass_at_n']:.3f} | {r['verdicts_right']:.3f} |" if coverage else ""
        print(
            f"| {r['variant']} | {r['loss']:.3f} | {r['plain']:.3f} ({r['plain_target']:.3f}) | "
            f"{r['agg']:.3f} ({r['random_copy']:.3f}) | {r['exact_copy']:.3f} |{extra} {rsa_steps} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
