"""`rsa eval`: evaluate a model with recursive self-aggregation (or a budget-matched baseline).

    rsa eval --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm --dataset aime25 \\
        --population 16 --k 4 --steps 10 --seed 1234 --out runs/aime25-rsa
    rsa eval --config configs/eval/aime25_rsa.yaml --seed 1235 --out runs/aime25-rsa-s1235

writes a run directory (see `rsa.runs`; `rsa.evaluate` runs it) with per-step Pass@1, Pass@N, majority vote and lengths;
`--resume` continues a killed run from its last completed step. Every input is validated before a
model is loaded. Options can also come from a YAML file (`--config FILE.yaml`, keys named like the
options with underscores); options given on the command line win. The options are the fields of
`rsa.configs.EvalConfig`; `rsa.evaluate.run_eval` runs the same evaluation from Python.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    """List the `eval` subcommand in `rsa --help` (its options are parsed by `main`)."""
    sub.add_parser(
        "eval",
        help="evaluate a model with RSA or a budget-matched baseline into a resumable run directory",
        add_help=False,
    )


def main(argv: list[str]) -> int:
    """Parse the options (TrlParser, `--config` + overrides) and run the evaluation; returns the exit code."""
    from rsa.commands.config_parser import parse_config
    from rsa.configs import EvalConfig

    return run(parse_config(EvalConfig, argv, prog="rsa eval", description=__doc__))


def run(config) -> int:
    """Validate everything, build the engine, run the evaluation, print the per-step table."""
    from rsa.engines.base import EngineError
    from rsa.evaluate import failure_summary, prepare_eval, run_eval
    from rsa.jsonl import DISK_FULL

    try:
        plan = prepare_eval(config)
        was_complete = plan.complete
        summaries = run_eval(plan)
    except OSError as exc:
        if exc.errno in DISK_FULL:  # the run folder keeps everything committed before the write that failed
            print(
                f"rsa eval: error: no space left on the device while writing {exc.filename or config.out}; free some "
                f"space, then run the same command with --resume to continue the run in {config.out}",
                file=sys.stderr,
            )
            return 1
        print(f"rsa eval: error: {exc}", file=sys.stderr)  # an unloadable model, a missing file
        return 2
    except ImportError as exc:  # engine package missing (says what to install)
        print(f"rsa eval: error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"rsa eval: engine error: {exc}", file=sys.stderr)
        if plan.run_dir.exists():
            print(f"rsa eval: the run in {config.out} can be continued with --resume", file=sys.stderr)
        return 1
    print(format_summary_table(summaries))
    print(f"run directory: {config.out}" + (" (already complete)" if was_complete else ""))
    failures = failure_summary(summaries)
    if failures:  # the run finished, but some requests failed after retries: exit 3, --resume retries them
        print(f"rsa eval: {failures}", file=sys.stderr)
        return 3
    return 0


def format_summary_table(summaries: list[dict]) -> str:
    """A plain-text table of the per-step metrics."""
    header = f"{'step':>4}  {'pass@1':>7}  {'pass@N':>7}  {'majority':>8}  {'len mean':>8}  {'distinct':>8}"
    rows = [
        f"{s['step']:>4}  {s['pass_at_1']:>7.4f}  {s['pass_at_n']:>7.4f}  {s['majority']:>8.4f}  "
        f"{s['mean_length']:>8.1f}  {s['distinct_answers']:>8.2f}"
        for s in summaries
    ]
    return "\n".join([header, *rows])
