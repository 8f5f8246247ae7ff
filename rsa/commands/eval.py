"""`rsa eval`: evaluate a model with recursive self-aggregation (or a budget-matched baseline).

    rsa eval --model Qwen/Qwen3-4B-Instruct-2507 --engine vllm --dataset aime25 \\
        --population 16 --k 4 --steps 10 --seed 1234 --out runs/aime25-rsa

writes a run directory (see `rsa.runs`) with per-step Pass@1, Pass@N, majority vote and lengths;
`--resume` continues a killed run from its last completed step. Every input is validated before a
model is loaded. Options can also come from a YAML file (`--config configs/eval/aime25.yaml`, keys
named like the options with underscores); options given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

ENGINES = ("hf", "vllm", "openai")
# argparse dests that are not part of a run's configuration
_NOT_CONFIG = {"func", "command", "verbose", "config"}


# Option defaults, applied after a `--config` YAML file (so the command line beats the file beats these).
DEFAULTS = {
    "engine": "vllm",
    "limit": None,
    "size": None,
    "data_seed": 0,
    "task": None,
    "method": "rsa",
    "population": 16,
    "k": 4,
    "steps": 10,
    "seed": 1234,
    "final": "random",
    "temperature": 1.0,
    "top_p": 1.0,
    "max_new_tokens": 8192,
    "thinking": "strip",
    "tensor_parallel_size": None,
    "base_url": None,
    "api_key": None,
    "max_model_len": None,
    "dtype": None,
    "batch_size": None,
    "gpu_memory_utilization": None,
    "max_retries": None,
    "engine_arg": None,
    "model": None,
    "dataset": None,
    "out": None,
    "resume": False,
    "progress": True,
    "schedule": "async",
    "allow_existing_dir": False,
    "repair": False,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `eval` subcommand."""
    from rsa.loop import FINAL_RULES, METHODS, SCHEDULES, THINKING_MODES

    p = sub.add_parser(
        "eval",
        help="evaluate a model with RSA or a budget-matched baseline into a resumable run directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # options not given stay unset until DEFAULTS fill them
    )
    p.add_argument(
        "--config", type=Path, help="YAML file of option defaults (keys like the options, e.g. max_new_tokens)"
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="model directory, hub name, or the served model name (openai engine)")
    g.add_argument("--engine", choices=ENGINES, help="generation backend (default: vllm)")
    g.add_argument("--dataset", help="dataset spec: file, built-in name (aime25, ...), hf:<repo>[:<split>], rg:<task>")
    g.add_argument("--limit", type=int, help="evaluate the first L problems")
    g.add_argument("--size", type=int, help="problems to generate for procedural Reasoning Gym sets")
    g.add_argument("--data-seed", type=int, help="seed of procedural Reasoning Gym generation (default 0)")
    g.add_argument("--task", help="task family for every row (math, rg, mcq, ...); inferred per row by default")
    g = p.add_argument_group("RSA")
    g.add_argument("--method", choices=METHODS, help="rsa (default), or a budget-matched baseline")
    g.add_argument("--population", "-N", type=int, help="population size N (default 16)")
    g.add_argument("--k", "-K", type=int, help="aggregation-set size K (default 4; 1 = self-refinement)")
    g.add_argument("--steps", "-T", type=int, help="steps T, step 1 being the initial sampling (default 10)")
    g.add_argument(
        "--seed", type=int, help="run seed; request seeds and aggregation sets derive from it (default 1234)"
    )
    g.add_argument("--final", choices=FINAL_RULES, help="final answer: a random member (default) or the majority vote")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, help="default 1.0")
    g.add_argument("--top-p", type=float, help="default 1.0")
    g.add_argument("--max-new-tokens", type=int, help="default 8192")
    g.add_argument(
        "--thinking", choices=THINKING_MODES, help="keep or strip (default) a thinking model's reasoning in candidates"
    )
    g = p.add_argument_group("engine")
    g.add_argument("--tensor-parallel-size", type=int, help="vllm: GPUs per model")
    g.add_argument("--base-url", action="append", help="openai: server URL (repeat for several servers)")
    g.add_argument("--api-key", help="openai: API key")
    g.add_argument("--max-model-len", type=int, help="context length (prompt + completion) in tokens")
    g.add_argument("--dtype", help="model dtype, e.g. bfloat16, float32 (engine default when omitted)")
    g.add_argument("--batch-size", type=int, help="hf: sequences per micro-batch; openai: requests in flight")
    g.add_argument("--max-retries", type=int, help="openai: retries per request (timeouts, connection errors, 5xx)")
    g.add_argument(
        "--engine-arg",
        action="append",
        metavar="KEY=VALUE",
        help="any other engine keyword argument, value parsed as YAML (repeatable), e.g. enforce_eager=true",
    )
    g.add_argument("--gpu-memory-utilization", type=float, help="vllm: fraction of GPU memory to use")
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="async (default): each problem moves to its next step as soon as its population is complete; "
        "barrier: one step at a time over all problems. Same results either way",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, help="run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed step")
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (a log line every minute)"
    )
    g.add_argument(
        "--allow-existing-dir",
        action="store_true",
        help="start a run in a non-empty --out folder that holds no run (its other files are left alone)",
    )
    g.add_argument(
        "--repair",
        action="store_true",
        help="with --resume: rebuild a corrupt metrics.jsonl from the population files (old file kept as .bad)",
    )
    p.set_defaults(func=run)


def resolve_options(args: argparse.Namespace) -> None:
    """Fill every option not given on the command line: from `--config` YAML, else from DEFAULTS."""
    values: dict = {}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"--config {config_file} does not exist")
        values = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"--config {config_file}: expected a mapping of option names to values")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        unknown = sorted(set(values) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"--config {config_file}: unknown option(s) {', '.join(unknown)}")
    for dest, default in DEFAULTS.items():
        if not hasattr(args, dest):
            setattr(args, dest, values.get(dest, default))
    if isinstance(args.base_url, str):
        args.base_url = [args.base_url]
    if isinstance(args.engine_arg, str):
        args.engine_arg = [args.engine_arg]
    if args.out is not None:
        args.out = Path(args.out)


def check_model(model: str | None, engine: str) -> str:
    """The model argument, made absolute when it is a local path; ValueError when it cannot be used."""
    if not model:
        raise ValueError("--model is required")
    if engine == "openai":
        return model  # a name the server knows; nothing to check locally
    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or path.exists()
    if not looks_local:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") and not _in_hub_cache(model):
            raise FileNotFoundError(
                f"--model {model}: no such directory, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)"
            )
        return model  # a hub name, resolved by the engine
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such directory")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(f"--model {model}: not a model directory (expected a config.json inside)")
    if not os.access(path / "config.json", os.R_OK):
        raise ValueError(f"--model {model}: config.json is not readable")
    return str(path.resolve())


def _local_context_length(model: str) -> int | None:
    """`max_position_embeddings` from a local model directory's config.json, when there is one."""
    config_file = Path(model) / "config.json"
    if not config_file.is_file():
        return None
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, json.JSONDecodeError):
        return None
    return int(value) if isinstance(value, int) else None


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub model `repo_id` has a cached config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def engine_options(args: argparse.Namespace) -> dict:
    """The engine options given, as `make_engine` keyword arguments; ValueError for another engine's option."""
    from rsa.engines import cli_engine_options

    options = cli_engine_options(args)
    for item in args.engine_arg or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--engine-arg {item!r}: expected KEY=VALUE, e.g. enforce_eager=true")
        options[key.strip()] = yaml.safe_load(text)
    return options


def run(args: argparse.Namespace) -> int:
    """Validate everything, load the engine, run the evaluation, print the per-step table."""
    from rsa.data import load_problems
    from rsa.engines.base import EngineError
    from rsa.loop import LoopConfig, RSALoop
    from rsa.runs import RunDirectory, build_manifest, failure_summary, model_revision, run_evaluation

    # 1. everything that needs no model: options, loop config, model path, dataset, run directory
    resolve_options(args)
    for name in ("model", "dataset", "out"):
        if getattr(args, name) is None:
            raise ValueError(f"--{name.replace('_', '-')} is required")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    options = engine_options(args)
    loop_config = LoopConfig(
        method=args.method,
        population=args.population,
        k=args.k,
        steps=args.steps,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        final=args.final,
        thinking=args.thinking,
        schedule=args.schedule,
    )
    if args.repair and not args.resume:
        raise ValueError("--repair works on an existing run: pass it with --resume")
    args.model = check_model(args.model, args.engine)
    context = args.max_model_len or _local_context_length(args.model)
    if context is not None and args.max_new_tokens >= context:
        raise ValueError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the model's context of {context} "
            "tokens; lower --max-new-tokens (or raise --max-model-len)"
        )
    problems = load_problems(args.dataset, limit=args.limit, task=args.task, size=args.size, seed=args.data_seed)
    logger.info("%d problems from %s", len(problems), args.dataset)

    config = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_CONFIG}
    config["out"] = str(args.out)
    revision = model_revision(args.model, query_hub=args.engine != "openai")
    manifest = build_manifest(
        config, model=args.model, engine=args.engine, revision=revision, problems=problems, seed=args.seed
    )
    run_dir = RunDirectory(args.out)
    if args.resume:
        run_dir.check_resumable(manifest)
    else:
        run_dir.check_new(allow_existing=args.allow_existing_dir)

    if args.repair:
        done = run_dir.repair_metrics(problems, loop_config)
    else:
        done = run_dir.completed_steps() if args.resume else []
    if len(done) >= loop_config.num_steps and not failure_summary(done):
        summaries = run_evaluation(None, problems, loop_config, run_dir, progress=False)  # nothing to generate
        print(format_summary_table(summaries))
        print(f"run directory: {args.out} (already complete)")
        return 0

    # 2. the engine; the run directory is created only once the engine is up and every prompt fits
    from rsa.engines import make_engine

    try:
        engine = make_engine(args.engine, args.model, **options)
    except (ImportError, OSError) as exc:  # engine package missing (says what to install), unloadable model
        print(f"rsa eval: error: {exc}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"rsa eval: engine error: {exc}", file=sys.stderr)
        return 1
    try:
        RSALoop(engine, problems, loop_config).check_context()
        if not args.resume:
            run_dir.create(manifest, problems, allow_existing=args.allow_existing_dir)
        summaries = run_evaluation(engine, problems, loop_config, run_dir, progress=args.progress)
    except EngineError as exc:
        print(f"rsa eval: engine error: {exc}", file=sys.stderr)
        if run_dir.exists():
            print(f"rsa eval: the run in {args.out} can be continued with --resume", file=sys.stderr)
        return 1
    finally:
        engine.close()
    print(format_summary_table(summaries))
    print(f"run directory: {args.out}")
    failures = failure_summary(summaries)
    if failures:
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
