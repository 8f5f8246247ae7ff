"""`rsa demo [--quick] --out DIR`: the paper's key experiment in miniature on a CPU (the README's main job).

Pre-trains a tiny model on a toy task (`--world pick`, the default, or `add`), builds an aggregation-aware dataset from it, trains four
arms with GRPO (standard, offline aggregation-aware, on-policy aggregation-aware, co-trained; same steps and
batch) for every training seed, evaluates base and arms with RSA on held-out problems for every RSA seed, and writes
the report (summary with paired comparisons and claim verdicts, Pass@1/Pass@N/majority-vs-step plots).
See rsa/toyworld/pipeline.py for the stages and the folder layout. Running it again resumes (with the same sizes: a folder made with others is refused).
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: the toy worlds (rsa.toyworld.worlds; listed here so that `rsa --help` does not import the library)
WORLD_NAMES = ("add", "pick")
DEFAULT_WORLD = "pick"  # rsa.toyworld.pipeline.DEFAULT_WORLD (tests/test_toyworld.py checks they agree)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `demo` subcommand."""
    p = sub.add_parser("demo", help="toy world: base vs standard RL vs aggregation-aware RL under RSA (CPU)")
    p.add_argument("--out", required=True, type=Path, help="demo folder (models, data, runs, report)")
    p.add_argument("--quick", action="store_true", help="a few minutes at reduced sizes (what CI runs)")
    p.add_argument(
        "--world",
        choices=sorted(WORLD_NAMES),
        default=DEFAULT_WORLD,
        help=f"toy task family (default {DEFAULT_WORLD}): pick (checking a candidate is one sum, solving is a search) "
        "or add (multi-term addition, where checking and solving are the same skill); docs/TOYWORLD.md",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="RSA evaluation seeds (default 1234 1235)")
    p.add_argument("--train-seeds", type=int, nargs="+", default=None, help="GRPO training seeds (default 0 1)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="training and evaluation jobs at a time, one CPU thread each (default: min(2, cores)); "
        "the numbers do not depend on it",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run or resume the toy world under `args.out`; prints the summary table."""
    from rsa.toyworld import ToyWorldConfig, run_toy_world

    config = ToyWorldConfig.quick(args.world) if args.quick else ToyWorldConfig.full(args.world)
    if args.seeds:
        config.eval_seeds = tuple(args.seeds)
    if args.train_seeds:
        config.train_seeds = tuple(args.train_seeds)
    if args.workers is not None:
        if args.workers < 1:
            raise SystemExit(f"rsa demo: --workers must be >= 1, got {args.workers}")
        config.workers = args.workers
    print(run_toy_world(args.out, config))
    print(f"plots: {args.out / 'report'}")
    return 0
