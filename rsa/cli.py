"""The `rsa` command line. Each subcommand lives in `rsa/commands/<name>.py` and exposes `add_parser`.

Commands configured by a dataclass (`rsa eval`, `rsa augment`; see `rsa.configs`) parse their own arguments
with `main(argv)` (TrlParser: `--config FILE.yaml` plus command-line overrides); the others use argparse here.
Every option is accepted in both spellings, `--a_b` and `--a-b`, in every subcommand (`FlagParser`), and an
unknown option is reported before anything else, with the closest known option when there is one.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

from rsa import __version__
from rsa.options import unknown_options

# Subcommand modules, in the order `rsa --help` lists them.
COMMANDS = [
    "tiny_model",
    "score",
    "show",
    "eval",
    "report",
    "demo",
    "publish",
    "augment",
    "train",
    "serve",
    "datasets",
    "env",
]
# Subcommands that parse their own arguments (`rsa.commands.<name>.main(argv)`).
CONFIG_COMMANDS = {"eval", "augment", "serve"}
# Loggers of HTTP clients: one INFO line per request (the openai engine's), shown only with -v.
CHATTY_LOGGERS = ("httpx", "httpcore", "openai", "urllib3")


class FlagParser(argparse.ArgumentParser):
    """A subcommand parser that takes every long option as `--a_b` and `--a-b`, and reports unknown options
    (with a suggestion) before missing required ones."""

    def add_argument(self, *names, **kwargs):
        """`add_argument` with the other spelling of each long option added (underscores listed first)."""
        spelled: list[str] = []
        for name in names:
            if name.startswith("--"):
                for variant in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                    if variant not in spelled:
                        spelled.append(variant)
            else:
                spelled.append(name)
        if spelled and spelled[0].startswith("--") and "dest" not in kwargs:
            kwargs["dest"] = spelled[0][2:]
        return super().add_argument(*spelled, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if "-" in self.prefix_chars and args is not None:
            unknown = unknown_options(args, self._option_string_actions)
            if unknown:
                self.error(f"unknown option(s) {', '.join(unknown)}; see `{self.prog} --help`")
        return super().parse_known_args(args, namespace)


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
        if i < len(argv) and not argv[i].startswith("-"):
            commands = sorted(
                name
                for action in self._actions
                if isinstance(action, argparse._SubParsersAction)
                for name in action.choices
            )
            if argv[i] not in commands:
                close = difflib.get_close_matches(argv[i], commands, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.error(f"unknown command {argv[i]!r}{hint}; the commands are {', '.join(commands)}")
        return super().parse_known_args(argv, namespace)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = RsaParser(prog="rsa", description="Recursive self-aggregation: evaluate, augment, train.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (rsa-rl)")
    # subcommand parsers are FlagParsers: only the top level dispatches config commands
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=FlagParser)
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
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback (eval and augment name their folder themselves)
        print(f"rsa {args.command}: interrupted", file=sys.stderr)
        return 130


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in CHATTY_LOGGERS:  # per-request lines drown the run's own log; -v shows them
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
