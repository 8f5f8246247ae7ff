"""`rsa augment`: build an aggregation-aware RL dataset, or import a public one.

Build (sample M candidates per problem once from the reference policy, mix plain and aggregation prompts):

    rsa augment --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm --dataset train.parquet \\
        --num-candidates 8 --k 4 --sets-per-problem 2 --aggregate-fraction 0.5 \\
        --balance easy=0.5,hard=0.5 --max-model-len 41984 --max-completion-length 8192 --out data/agg

writes OUT/candidates/shard_NNNNN.jsonl (resumable with --resume), OUT/train.parquet (docs/FORMATS.md)
and OUT/build_report.json, and prints the achieved mixture, the balance, and a prompt-length histogram.
Changing only the mixture options (fraction, K, sets, balance, budget) on --resume rebuilds the dataset
from the candidates already sampled.

Import (a verl-layout aggregation dataset, e.g. the paper's, converted to our columns):

    rsa augment --import aggregation_aware_rl_data.parquet --out data/agg-paper \\
        [--tokenizer Qwen/Qwen3-4B-Instruct-2507 --max-model-len 41984 --max-completion-length 8192]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

ENGINES = ("hf", "vllm", "openai")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the augment options to `p` (shared by `rsa augment` and data/build_agg_dataset.py)."""
    from rsa.augment import OVERFLOW_MODES, SHORTFALL_MODES

    g = p.add_argument_group("data and reference policy")
    g.add_argument("--dataset", help="problems: file, built-in name, hf:<repo>[:<split>], rg:<task>[+<task>...]")
    g.add_argument("--limit", type=int, help="use the first L problems")
    g.add_argument("--size", type=int, help="problems to generate for procedural Reasoning Gym sets")
    g.add_argument("--data-seed", type=int, default=0, help="seed of procedural Reasoning Gym generation")
    g.add_argument("--task", help="task family for every row (math, rg, mcq, ...); inferred per row by default")
    g.add_argument("--model", help="reference policy that samples the candidates (the model to be trained)")
    g.add_argument("--engine", choices=ENGINES, default="vllm", help="generation backend (default: vllm)")
    g.add_argument("--tokenizer", help="training model's tokenizer for length budgeting (default: --model)")
    g = p.add_argument_group("candidates")
    g.add_argument("--num-candidates", "-M", type=int, default=4, help="candidates sampled per problem (default 4)")
    g.add_argument("--temperature", type=float, default=1.0, help="default 1.0")
    g.add_argument("--top-p", type=float, default=1.0, help="default 1.0")
    g.add_argument(
        "--candidate-max-tokens", type=int, help="max new tokens per candidate (default: --max-completion-length)"
    )
    g.add_argument("--seed", type=int, default=1234, help="request seeds and set draws derive from it (default 1234)")
    g.add_argument("--shard-size", type=int, default=256, help="problems per shard = per engine call (default 256)")
    g = p.add_argument_group("mixture")
    g.add_argument("--aggregate-fraction", type=float, default=0.5, help="fraction of aggregation prompts (0.5)")
    g.add_argument("--k", "-K", default="4", help="candidates per aggregation prompt: 4, or a range like 2-4")
    g.add_argument("--sets-per-problem", type=int, default=1, help="aggregation prompts per problem (distinct sets)")
    g.add_argument(
        "--balance", help="target fractions of candidate-set classes, e.g. easy=0.5,hard=0.5,all_wrong=0 (AggLM)"
    )
    g.add_argument(
        "--shortfall",
        choices=SHORTFALL_MODES,
        default="shrink",
        help="a class short of its target: shrink the set count to keep the fractions (default) or fill with others",
    )
    g = p.add_argument_group("length budget")
    g.add_argument("--max-model-len", type=int, help="training context: prompt + completion (default: model config)")
    g.add_argument("--max-completion-length", type=int, default=8192, help="training completion length (8192)")
    g.add_argument(
        "--overflow", choices=OVERFLOW_MODES, default="cap", help="over-long candidates: cap with a marker, or drop"
    )
    g = p.add_argument_group("engine")
    g.add_argument("--dtype", help="model dtype, e.g. bfloat16, float32")
    g.add_argument("--engine-max-model-len", type=int, help="the generation engine's context length")
    g.add_argument("--batch-size", type=int, help="hf: sequences per micro-batch; openai: requests in flight")
    g.add_argument("--tensor-parallel-size", type=int, help="vllm: GPUs per model")
    g.add_argument("--gpu-memory-utilization", type=float, help="vllm: fraction of GPU memory to use")
    g.add_argument("--base-url", action="append", help="openai: server URL (repeat for several servers)")
    g.add_argument("--api-key", help="openai: API key")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="output directory")
    g.add_argument("--resume", action="store_true", help="continue the build in --out (finished shards are kept)")
    g.add_argument(
        "--import", dest="import_file", type=Path, help="convert a verl-layout parquet file instead of building"
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `augment` subcommand."""
    p = sub.add_parser(
        "augment",
        help="build an aggregation-aware RL dataset (candidates -> aggregation prompts) or import one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def engine_options(args: argparse.Namespace) -> dict:
    """The engine options given, as `make_engine` keyword arguments; ValueError for another engine's option."""
    from rsa.engines import CLI_ENGINE_OPTIONS, cli_engine_options

    # here --max-model-len is the training budget; the engine's context is --engine-max-model-len
    mapping = {k: v for k, v in CLI_ENGINE_OPTIONS.items() if k != "max_model_len"}
    mapping["engine_max_model_len"] = CLI_ENGINE_OPTIONS["max_model_len"]
    options = cli_engine_options(args, mapping)
    return options


def run(args: argparse.Namespace) -> int:
    """Validate the options, then import or build; prints the report."""
    from rsa.augment import (
        DATASET_FILE,
        CandidateConfig,
        LengthBudget,
        MixConfig,
        build_augmented_dataset,
        default_max_model_len,
        import_verl,
    )
    from rsa.engines.base import EngineError

    if args.out is None:
        raise ValueError("--out is required")
    if args.import_file is not None:
        budget = None
        if args.tokenizer or args.max_model_len:
            if not args.tokenizer:
                raise ValueError("--max-model-len with --import needs --tokenizer to count prompt tokens")
            budget = LengthBudget.from_pretrained(args.tokenizer, args.max_model_len, args.max_completion_length)
        report = import_verl(args.import_file, args.out, budget=budget)
        print(report.summary())
        print(f"dataset: {args.out / DATASET_FILE}")
        return 0

    for name in ("model", "dataset"):
        if getattr(args, name) is None:
            raise ValueError(f"--{name} is required (or --import FILE)")
    model = args.model
    if args.engine != "openai" and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    tokenizer = args.tokenizer
    if args.engine == "openai" and not tokenizer:
        raise ValueError("--engine openai serves a model by name: pass --tokenizer (the training model's directory)")
    candidates = CandidateConfig(
        model=model,
        dataset=args.dataset,
        engine=args.engine,
        engine_options=engine_options(args),
        num_candidates=args.num_candidates,
        temperature=args.temperature,
        top_p=args.top_p,
        candidate_max_tokens=args.candidate_max_tokens or args.max_completion_length,
        seed=args.seed,
        shard_size=args.shard_size,
        task=args.task,
        limit=args.limit,
        size=args.size,
        data_seed=args.data_seed,
    )
    mix = MixConfig(
        max_model_len=args.max_model_len or default_max_model_len(tokenizer or model),
        max_completion_length=args.max_completion_length,
        aggregate_fraction=args.aggregate_fraction,
        k=args.k,
        sets_per_problem=args.sets_per_problem,
        balance=args.balance,
        shortfall=args.shortfall,
        overflow=args.overflow,
        seed=args.seed,
    )
    try:
        report = build_augmented_dataset(
            candidates, mix, args.out, tokenizer=tokenizer, resume=args.resume, progress=args.progress
        )
    except EngineError as exc:
        print(f"rsa augment: engine error: {exc}", file=sys.stderr)
        if (args.out / "manifest.json").exists():
            print(f"rsa augment: the build in {args.out} can be continued with --resume", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"dataset: {args.out / DATASET_FILE}")
    return 0
