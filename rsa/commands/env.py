"""`rsa env`: the environment report to paste into a bug report (versions, platform, CUDA, vLLM)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `env` subcommand."""
    p = sub.add_parser("env", help="print the environment (versions, platform, CUDA, vLLM) for bug reports")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report."""
    from rsa.environment import environment_report, format_report

    print("rsa-rl environment (paste these lines into a bug report):\n")
    print(format_report(environment_report()))
    return 0
