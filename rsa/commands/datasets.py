"""`rsa datasets [--rg]`: the built-in datasets `--dataset` accepts by name, one line each, and the other spec
forms; `--rg` lists the Reasoning Gym tasks `rg:<task>` accepts."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `datasets` subcommand."""
    p = sub.add_parser("datasets", help="list the built-in datasets (and, with --rg, the Reasoning Gym tasks)")
    p.add_argument("--rg", action="store_true", help="list the Reasoning Gym task names that rg:<task> accepts")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the listing."""
    from rsa.data import dataset_lines, reasoning_gym_tasks

    if args.rg:
        print("\n".join(reasoning_gym_tasks()))
        return 0
    print("\n".join(dataset_lines()))
    print(
        "\nAlso: a .parquet/.jsonl/.json file (verl layout or flat rows), hf:<repo>[:<split>], or "
        "rg:<task>[+<task>...] (`rsa datasets --rg` lists the tasks). See docs/FORMATS.md."
    )
    return 0
