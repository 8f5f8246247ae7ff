"""`rsa demo [--quick] --out DIR`: an RSA evaluation end to end on the CPU, offline, in about a minute.

Builds the tiny Qwen3 model into DIR/model (or reuses it), evaluates RSA and the budget-matched
plain-sampling baseline on a small procedural Reasoning Gym set with the transformers (hf) engine, and
writes the report (table + Pass@1 / Pass@N / majority-vs-step plots) into DIR/report.

The tiny model has random weights, so its accuracy is ~0: the demo shows the pipeline (batched steps,
run directories, resume, metrics, plots), not RSA's gains. Running it again reuses finished work.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATASET = "rg:basic_arithmetic"
# (problems, population N, K, steps T, max new tokens): full demo ~1 min, --quick ~20 s on 2 CPU cores
FULL = {"limit": 8, "population": 4, "k": 2, "steps": 4, "max_new_tokens": 48}
QUICK = {"limit": 4, "population": 4, "k": 2, "steps": 2, "max_new_tokens": 24}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `demo` subcommand."""
    p = sub.add_parser("demo", help="tiny offline RSA evaluation + report on the CPU (about a minute)")
    p.add_argument("--out", required=True, type=Path, help="demo directory (model, runs, report)")
    p.add_argument("--quick", action="store_true", help="a smaller run (~20 s)")
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=run)


def ensure_tiny_model(model_dir: Path) -> Path:
    """The tiny model in `model_dir`, built there when missing."""
    from rsa.tiny import build_tiny_model

    if (model_dir / "rsa_tiny_model.json").is_file() and (model_dir / "config.json").is_file():
        return model_dir
    print(f"building the tiny model in {model_dir} ...")
    return build_tiny_model(model_dir)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the model, run RSA and the sampling baseline, write the report."""
    from rsa.cli import build_parser
    from rsa.report import write_report

    start = time.perf_counter()
    out: Path = args.out
    model_dir = ensure_tiny_model(out / "model")
    sizes = QUICK if args.quick else FULL
    runs = []
    for method in ("rsa", "sample"):
        run_dir = out / "runs" / method
        argv = [
            "eval", "--engine", "hf", "--model", str(model_dir), "--dataset", DATASET, "--method", method,
            "--limit", str(sizes["limit"]), "--population", str(sizes["population"]), "--k", str(sizes["k"]),
            "--steps", str(sizes["steps"]), "--max-new-tokens", str(sizes["max_new_tokens"]),
            "--seed", str(args.seed), "--dtype", "float32", "--batch-size", "64", "--out", str(run_dir),
        ]  # fmt: skip
        if (run_dir / "manifest.json").is_file():
            argv.append("--resume")  # a previous demo's run: finish or reuse it
        print(f"== {method}: {' '.join(argv)}")
        eval_args = build_parser().parse_args(argv)
        eval_args.func(eval_args)
        runs.append(run_dir)
    paths = write_report(runs, out / "report")
    print(paths["markdown"].read_text(encoding="utf-8"))
    for run_dir in runs:
        final = json.loads((run_dir / "final.json").read_text(encoding="utf-8"))
        print(f"{run_dir.name}: final accuracy ({final['rule']} member) {final['accuracy']:.3f}")
    print(f"plots: {paths['rsa_steps']}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s (tiny random model: accuracy ~0 is expected)")
    return 0
