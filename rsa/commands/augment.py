"""`rsa augment`: build an aggregation-aware RL dataset, or import a public one.

Build (sample M candidates per problem once from the reference policy, mix plain and aggregation prompts):

    rsa augment --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm --dataset train.parquet \\
        --num-candidates 8 --k 4 --sets-per-problem 2 --aggregate-fraction 0.5 \\
        --balance easy=0.5,hard=0.5 --train-context-len 41984 --max-completion-length 8192 --out data/agg

writes OUT/candidates/shard_NNNNN.jsonl (resumable with --resume), OUT/train.parquet (docs/FORMATS.md)
and OUT/build_report.json, and prints the achieved mixture, the balance, and a prompt-length histogram.
Changing only the mixture options (fraction, K, sets, balance, budget) on --resume rebuilds the dataset
from the candidates already sampled. `--max-model-len` is the generation engine's context (as in
`rsa eval`); the training length budget is `--train-context-len` and `--max-completion-length`.

Import (a verl-layout aggregation dataset, e.g. the paper's, converted to our columns):

    rsa augment --import aggregation_aware_rl_data.parquet --out data/agg-paper \\
        [--tokenizer Qwen/Qwen3-4B-Instruct-2507 --train-context-len 41984 --max-completion-length 8192]

`--push_to_hub --hub_model_id REPO` then uploads OUT as a Hub dataset with a card of its provenance and mixture
(`rsa.publish.push_dataset`; the options are named as in TRL: `--hub_private_repo`, `--hub_revision`); the token
is checked before the build starts, and when the upload fails the built dataset stays in OUT.

Options can also come from a YAML file (`--config FILE.yaml`); options given on the command line win.
The options are the fields of `rsa.configs.AugmentConfig`; `rsa.build_dataset.run_augment` runs the same
build from Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """List the `augment` subcommand in `rsa --help` (its options are parsed by `main`)."""
    sub.add_parser(
        "augment",
        help="build an aggregation-aware RL dataset (candidates -> aggregation prompts) or import one",
        add_help=False,
    )


def main(argv: list[str], prog: str = "rsa augment") -> int:
    """Parse the options (TrlParser, `--config` + overrides), then import or build; returns the exit code."""
    from rsa.commands.config_parser import parse_config
    from rsa.configs import AugmentConfig

    for i, item in enumerate(argv[:-1]):  # the old `--push-to-hub REPO`: push_to_hub is TRL's boolean now
        value = argv[i + 1]
        if item in ("--push_to_hub", "--push-to-hub") and not value.startswith("-") and "/" in value:
            raise ValueError(f"--push_to_hub is a switch (as in TRL): write --push_to_hub --hub_model_id {value}")
    return run(parse_config(AugmentConfig, argv, prog=prog, description=__doc__), prog)


def run(config, prog: str = "rsa augment") -> int:
    """Import or build as `config` says, then print the report."""
    from rsa.augment import DATASET_FILE
    from rsa.build_dataset import run_augment
    from rsa.engines.base import EngineError

    token = None
    if config.push_to_hub:
        from rsa.hub import check_can_push

        token = check_can_push(None)  # refuses offline or without a token, before any work
    try:
        report = run_augment(config)
    except EngineError as exc:
        print(f"{prog}: engine error: {exc}", file=sys.stderr)
        if (Path(config.out) / "manifest.json").exists():
            print(f"{prog}: the build in {config.out} can be continued with --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # finished shards are on disk
        print(f"{prog}: interrupted; finished shards are kept: continue with the same command and --resume",
              file=sys.stderr)  # fmt: skip
        return 130
    print(report.summary())
    print(f"dataset: {Path(config.out) / DATASET_FILE}")
    if config.push_to_hub:
        from rsa.publish import push_dataset

        try:
            url = push_dataset(config.out, config.hub_model_id, token=token, private=config.hub_private_repo,
                               revision=config.hub_revision)  # fmt: skip
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001  (network and Hub errors share no base class): one line, not a traceback
            print(
                f"{prog}: could not push to the Hub ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"the dataset is kept in {config.out}: push it later with the same command and --resume",
                file=sys.stderr,
            )
            return 1
        print(f"pushed to the Hub: {url}")
    return 0
