"""`rsa eval`: evaluate a model with recursive self-aggregation (or a budget-matched baseline).

    rsa eval --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm --dataset aime25 \\
        --population 16 --k 4 --steps 10 --seed 1234 --out runs/aime25-rsa
    rsa eval --config configs/eval/aime25_rsa.yaml --seed 1235 --out runs/aime25-rsa-s1235

writes a run directory (see `rsa.runs`; `rsa.evaluate` runs it) with per-step Pass@1, Pass@N, majority vote and lengths;
`--resume` continues a killed run from its last completed step:

    rsa eval --out runs/aime25-rsa --resume              # model, dataset and settings from its manifest.json
    rsa eval --out runs/aime25-rsa --resume --steps 20   # extend a finished run: steps 1..T kept, T+1..20 added
    rsa eval --config sweep.yaml --out runs/x --resume_if_exists   # resume when runs/x holds a run, else start

Options given with `--resume` must agree with the run's manifest (except where it runs: batch size, server
URL, progress, ...), or be a larger `--steps`. Every input is validated before a
model is loaded. Options can also come from a YAML file (`--config FILE.yaml`, keys named like the
options with underscores); options given on the command line win. The options are the fields of
`rsa.configs.EvalConfig`; `rsa.evaluate.run_eval` runs the same evaluation from Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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

    defaults = resume_defaults(argv)
    return run(parse_config(EvalConfig, argv, prog="rsa eval", description=__doc__, defaults=defaults))


#: options a resumed run does not take from its manifest: they say what this invocation does, not what the run is
_NOT_INHERITED = ("out", "resume", "resume_if_exists", "repair", "allow_existing_dir")


def _option_value(argv: list[str], *names: str) -> str | None:
    """The value of the last `--name VALUE` / `--name=VALUE` in `argv` (either spelling), if any."""
    value = None
    spellings = {f"--{n}" for name in names for n in (name, name.replace("_", "-"))}
    for i, item in enumerate(argv):
        flag, eq, rest = item.partition("=")
        if flag in spellings:
            value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def resume_defaults(argv: list[str]) -> dict | None:
    """The option values of the run being resumed: its manifest's config, when `argv` asks to resume (`--resume`
    or `--resume_if_exists`) a folder (`--out`, or the `--config` file's `out`) that holds a run; else None."""
    import yaml

    from rsa.configs import EvalConfig, config_fields, read_manifest
    from rsa.runs import MANIFEST

    flags = {item.partition("=")[0].replace("_", "-") for item in argv}
    if not flags & {"--resume", "--resume-if-exists"} or any(
        item.partition("=")[2].lower() in ("false", "no", "0")
        for item in argv
        if item.partition("=")[0].replace("_", "-") in ("--resume", "--resume-if-exists")
    ):
        return None
    out = _option_value(argv, "out")
    config_file = _option_value(argv, "config")
    if out is None and config_file and Path(config_file).is_file():
        try:
            values = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            values = None  # parse_config reports the bad file
        out = values.get("out") if isinstance(values, dict) else None
    if not out or not (Path(out) / MANIFEST).is_file():
        if out and "--resume" in flags and not (Path(out) / MANIFEST).exists():
            raise FileNotFoundError(
                f"--resume: {out} holds no run (no {MANIFEST}); start it without --resume, or pass --resume_if_exists"
            )
        return None
    config = read_manifest(Path(out) / MANIFEST).get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{Path(out) / MANIFEST}: no `config` section; resume with every option given")
    known = set(config_fields(EvalConfig)) - set(_NOT_INHERITED)
    # an option on the command line replaces the run's value (list options such as --engine-arg would add to it)
    given = {item.partition("=")[0].lstrip("-").replace("-", "_") for item in argv if item.startswith("--")}
    return {key: value for key, value in config.items() if key in known and key not in given}


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
    except KeyboardInterrupt:  # Ctrl-C: committed steps and (problem, step) groups are on disk
        from rsa.runs import MANIFEST

        started = (Path(config.out) / MANIFEST).is_file()
        print(
            f"rsa eval: interrupted; what was committed is kept: continue with `rsa eval --out {config.out} --resume`"
            if started
            else "rsa eval: interrupted before the run started; nothing was written",
            file=sys.stderr,
        )
        return 130
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
