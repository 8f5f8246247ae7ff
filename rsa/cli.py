"""The `rsa` command line. Each subcommand lives in `rsa/commands/<name>.py` and exposes `add_parser`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand modules, in the order `rsa --help` lists them.
COMMANDS = [
    "tiny_model",
    "score",
    "eval",
    "report",
    "demo",
    "publish",
    "augment",
    "train",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="rsa", description="Recursive self-aggregation: evaluate, augment, train.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"rsa.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rsa` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Input errors are reported as one clear line, not a traceback.
        print(f"rsa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
