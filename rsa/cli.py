"""The `rsa` command line. Each subcommand lives in `rsa/commands/<name>.py` and exposes `add_parser`.

Commands configured by a dataclass (`rsa eval`, `rsa augment`; see `rsa.configs`) parse their own arguments
with `main(argv)` (TrlParser: `--config FILE.yaml` plus command-line overrides); the others use argparse here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rsa import __version__

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
    "datasets",
    "env",
]
# Subcommands that parse their own arguments (`rsa.commands.<name>.main(argv)`).
CONFIG_COMMANDS = {"eval", "augment"}


class RsaParser(argparse.ArgumentParser):
    """The top-level parser: hands the arguments of a config command (`CONFIG_COMMANDS`) to that command."""

    def parse_known_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        i = 0
        while i < len(argv) and argv[i] in ("-v", "--verbose"):
            i += 1
        if i < len(argv) and argv[i] in CONFIG_COMMANDS:
            command, rest = argv[i], argv[i + 1 :]
            namespace = namespace or argparse.Namespace()
            namespace.verbose, namespace.command = i > 0, command
            namespace.func = lambda _args: importlib.import_module(f"rsa.commands.{command}").main(rest)
            return namespace, []
        return super().parse_known_args(argv, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = RsaParser(prog="rsa", description="Recursive self-aggregation: evaluate, augment, train.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (rsa-rl)")
    # subcommand parsers are plain: only the top level dispatches config commands
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=argparse.ArgumentParser)
    for name in COMMANDS:
        importlib.import_module(f"rsa.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rsa` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:  # a config command's --help, or a value argparse could not convert (it said why)
        return exc.code if isinstance(exc.code, int) else 2
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
