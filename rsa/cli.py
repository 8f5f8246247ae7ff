"""The `rsa` command line. Each subcommand lives in `rsa/commands/<name>.py` and exposes `add_parser`.

Commands configured by a dataclass (`rsa eval`, `rsa augment`; see `rsa.configs`) parse their own arguments
with `main(argv)` (TrlParser: `--config FILE.yaml` plus command-line overrides); the others use argparse here.
"""

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
]
# Subcommands that parse their own arguments (`rsa.commands.<name>.main(argv)`).
CONFIG_COMMANDS = {"eval", "augment"}


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
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if argv and argv[0] in CONFIG_COMMANDS:
        command, rest = argv[0], argv[1:]
        _configure_logging(verbose)
        try:
            return int(importlib.import_module(f"rsa.commands.{command}").main(rest) or 0)
        except SystemExit as exc:  # --help, or a value argparse could not convert (it printed why)
            return exc.code if isinstance(exc.code, int) else 2
        except (ValueError, FileNotFoundError) as exc:
            print(f"rsa {command}: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(["--verbose", *argv] if verbose else argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Input errors are reported as one clear line, not a traceback.
        print(f"rsa {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


if __name__ == "__main__":
    sys.exit(main())
