"""`rsa report RUN_DIR... [--out DIR]`: a table (Markdown + CSV) and Pass@1 / Pass@N / majority-vs-step plots.

With one run directory and no `--out`, the report goes into `RUN_DIR/report`; with several, `--out` is
required. Each run is one row of the table and one line in each plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `report` subcommand."""
    p = sub.add_parser("report", help="tables and plots (Pass@1, Pass@N, majority vs step) for run directories")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories written by `rsa eval`")
    p.add_argument("--out", type=Path, help="output directory (default: RUN_DIR/report for a single run)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print the Markdown table."""
    from rsa.report import write_report

    out = args.out
    if out is None:
        if len(args.runs) > 1:
            raise ValueError("--out is required when reporting several runs")
        out = args.runs[0] / "report"
    paths = write_report(args.runs, out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
