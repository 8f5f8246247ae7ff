"""`rsa train --config RECIPE.yaml [--option value ...]`: aggregation-aware GRPO training (one process).

Every argument after `train` goes unchanged to the training parser (TRL's: underscored recipe options,
`rsa train --help` lists them), so this is the same as `python -m rsa.train ...` and
`python train/grpo_agg.py ...`. For several processes or DeepSpeed use `accelerate launch` with
train/grpo_agg.py or `-m rsa.train` (docs/TRAINING.md).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `train` subcommand; its arguments are parsed by the training parser, not here."""
    # No prefix characters and no -h of its own: `--config`, `--help`, ... all reach the training parser.
    p = sub.add_parser(
        "train",
        help="GRPO training with a recipe (TRL arguments: --config RECIPE.yaml --max_steps 5 ...)",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="training arguments (rsa train --help)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse the training arguments and train; returns the exit code."""
    from rsa.train import cli

    return cli(args.train_args, prog="rsa train")
