"""Command-line parsing of the config dataclasses (`rsa.configs`) the way training parses its recipes.

`parse_config(EvalConfig, argv, prog="rsa eval")` builds a `trl.TrlParser` (a `transformers.HfArgumentParser`)
over the dataclass: every field is an option spelled with underscores or dashes (`--max_new_tokens`,
`--max-new-tokens`), `--config FILE.yaml` sets any of them, and options on the command line win.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's layout and show each option's default (the dataclass field's), when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS) and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_config_parser(cls: type, prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """The parser of config class `cls`, with a `--config` option for its help text."""
    from trl import TrlParser

    parser = TrlParser((cls,), prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=argparse.SUPPRESS,
        help="YAML mapping of option names to values (e.g. max_new_tokens: 64); command-line options win",
    )
    return parser


def read_config_file(path: Path, cls: type) -> dict:
    """The option values in the YAML file `path`; ValueError naming the file for anything `cls` does not know."""
    import yaml

    from rsa.configs import config_fields

    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"--config {path}: not a readable YAML file ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values")
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - set(config_fields(cls)))
    if unknown:
        raise ValueError(f"--config {path}: unknown option(s) {', '.join(unknown)}; see --help for the options")
    return values


def _pop_config(argv: list[str]) -> Path | None:
    """Remove `--config FILE` (or `--config=FILE`) from `argv`; the file, when given."""
    for i, item in enumerate(argv):
        if item == "--config":
            if i + 1 >= len(argv):
                raise ValueError("--config needs a YAML file")
            path = argv[i + 1]
            del argv[i : i + 2]
            return Path(path)
        if item.startswith("--config="):
            del argv[i]
            return Path(item.partition("=")[2])
    return None


def parse_config(
    cls: type[T], argv: Sequence[str], prog: str, description: str | None = None, defaults: dict | None = None
) -> T:
    """An instance of config class `cls` from `argv` (its `__post_init__` validates it).

    `defaults` (e.g. a resumed run's manifest config) are the values below the `--config` file's, which are
    below the command line's. `--help` prints the options and exits (SystemExit); a malformed value exits like
    argparse does (code 2); an unknown option or config key raises ValueError, before any other check, naming
    the closest known option.
    """
    from rsa.options import unknown_options

    argv = list(argv)
    parser = build_config_parser(cls, prog, description)
    if "-h" in argv or "--help" in argv:
        parser.parse_args(["--help"])
    config_file = _pop_config(argv)
    unknown = unknown_options(argv, parser._option_string_actions)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; see `{prog} --help`")
    if defaults:
        parser.set_defaults_with_config(**defaults)
    if config_file is not None:
        parser.set_defaults_with_config(**read_config_file(config_file, cls))
    *outputs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise ValueError(f"unknown option(s) {' '.join(remaining)}; see `{prog} --help`")
    return outputs[0]
