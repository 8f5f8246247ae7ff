"""`rsa report RUN_DIR_OR_FOLDER... [--out DIR] [--skip-incomplete]`: runs grouped by configuration (seed
aside) with mean ± std and bootstrap intervals, per-run and per-group tables (Markdown + CSV, accuracies in
percent), and plots of Pass@1 / Pass@N / majority vs RSA step (and vs training step for checkpoint sweeps).

A folder that is not itself a run is searched for run folders (its subfolders holding a manifest.json). With
one path and no `--out`, the report goes into `PATH/report`; with several, `--out` is required.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `report` subcommand."""
    p = sub.add_parser(
        "report", help="tables and plots for run directories, seeds pooled per configuration (mean ± std)"
    )
    p.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run directories written by `rsa eval`, or folders of them",
    )
    p.add_argument("--out", type=Path, help="output directory (default: PATH/report for a single path)")
    p.add_argument(
        "--skip-incomplete",
        action="store_true",
        help="leave unfinished runs out (listed in report.md) instead of failing",
    )
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the intervals")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print its Markdown."""
    from rsa.report import write_report

    out = args.out
    if out is None:
        if len(args.runs) > 1:
            raise ValueError("--out is required when reporting several paths")
        out = args.runs[0] / "report"
    paths = write_report(args.runs, out, skip_incomplete=args.skip_incomplete, resamples=args.resamples)
    print(paths["markdown"].read_text(encoding="utf-8"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
