"""The parts an aggregation-aware GRPO run is set up from: configs, dataset loading, validation, rewards, resume,
completion logging, provenance.

The training entry that assembles them is `rsa.train.main` (run by `python -m rsa.train`, `rsa train` and the thin
`train/grpo_agg.py`); this module only provides the parts. Everything here that can go wrong with a recipe is
checked before a model is loaded, and every error says which setting to change:

- `GRPOAggScriptArguments`: where the training rows come from, which rewards, logging and resume options.
- `GRPOAggConfig`: TRL's `GRPOConfig` plus a generation-batch check whose error names the fix.
- `load_training_dataset`: rows in the `docs/FORMATS.md` training layout (from `rsa augment`), and/or a plain
  problem spec (`rsa.data.load_problems`) turned into plain-prompt rows for a standard-RL run.
- `check_reward_columns`, `check_prompt_lengths`, `check_dataset_size`: the data fits the rewards and the model.
- `CompletionLogger`: every scored completion appended to a local JSONL file (rank 0 writes, all ranks' rows).
- `ProvenanceCallback`: the exact configuration written next to every checkpoint (`rsa_training.json`).

This module imports TRL at its top: it is training-only and nothing in `rsa` imports it eagerly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import GRPOConfig, ScriptArguments

from rsa.jsonl import open_atomic
from rsa.provenance import package_versions
from rsa.rewards import RewardFn, completion_text, get_reward
from rsa.rows import CORE_COLUMNS, META_COLUMNS, REQUIRED_COLUMNS, features, problem_to_row, row_to_problem

logger = logging.getLogger(__name__)

KINDS = ("plain", "aggregate")
PROVENANCE_FILE = "rsa_training.json"
#: row columns copied into the completion log (the rollout columns of rsa.onpolicy and rsa.cotrain included)
LOGGED_COLUMNS = ("task", "kind", "problem_id", "rollout_prompt", "cotrain_group", "cotrain_k")


class ConfigError(ValueError):
    """A recipe, dataset or launch setting that cannot work; the message says what to change."""


# ----- configuration -----------------------------------------------------------------------------------------
@dataclass
class GRPOAggScriptArguments(ScriptArguments):
    """Script arguments of `train/grpo_agg.py` (TRL's `ScriptArguments` plus our data, reward and log options).

    Training rows come from any mix of: `dataset_files` (parquet/JSONL from `rsa augment`), `dataset_name`
    (a Hugging Face dataset, hub or local directory, in the same layout) and `problems` (a problem spec
    turned into plain prompts).
    """

    dataset_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "training-row files (.parquet/.jsonl) in the docs/FORMATS.md layout, e.g. from `rsa augment`"
        },
    )
    problems: str | None = field(
        default=None,
        metadata={
            "help": "a problem spec for rsa.data.load_problems (file, benchmark name, hf:..., rg:<task>+...); "
            "each problem becomes one plain-prompt row (standard RL)"
        },
    )
    problems_size: int | None = field(
        default=None, metadata={"help": "problems to generate for procedural (rg:) specs"}
    )
    problems_seed: int = field(default=0, metadata={"help": "seed of procedural problem generation"})
    problems_limit: int | None = field(default=None, metadata={"help": "keep the first L problems of the spec"})
    problems_task: str | None = field(
        default=None, metadata={"help": "task of every problem in the spec (math, rg, mcq, ...); inferred by default"}
    )
    dataset_kinds: list[str] | None = field(
        default=None,
        metadata={"help": "keep only rows whose `kind` is listed: plain, aggregate (default: all rows)"},
    )
    dataset_limit: int | None = field(default=None, metadata={"help": "keep the first L rows after filtering"})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["task"],
        metadata={
            "help": "reward names: task (every row routed by its `task` column), math, rg, mcq, any task name, "
            "length_shaping (smoke tests only), or a dotted import path module.function"
        },
    )
    prompt_overflow: str = field(
        default="error",
        metadata={
            "help": "prompts whose tokens + max_completion_length exceed the model's length: 'error' (default) "
            "or 'drop' (skip those rows, logging how many)"
        },
    )
    completions_log: str = field(
        default="completions.jsonl",
        metadata={
            "help": "JSONL file receiving every scored completion (relative paths are under output_dir; '' = off)"
        },
    )
    auto_resume: bool = field(
        default=True,
        metadata={"help": "resume from the last checkpoint-* in output_dir when resume_from_checkpoint is unset"},
    )
    on_policy_aggregation: float = field(
        default=0.0,
        metadata={
            "help": "share of plain prompt groups that become on-policy aggregation groups: K candidates sampled "
            "from the current policy, then the group's completions answer their aggregation prompt "
            "(rsa.onpolicy; 0 = off, the paper's offline mode uses rows from `rsa augment`)"
        },
    )
    on_policy_k: str = field(
        default="3", metadata={"help": "candidates per on-policy aggregation prompt: K or a range such as 2-4"}
    )
    cotrained_aggregation: float = field(
        default=0.0,
        metadata={
            "help": "share of plain prompt groups co-trained: the group's first half is generated plain, its second "
            "half aggregates K of those completions; plain rows are rewarded for their coverage contribution "
            "(rsa.cotrain; 0 = off)"
        },
    )
    cotrained_k: str = field(
        default="2", metadata={"help": "candidates per co-trained aggregation prompt: K or a range such as 2-4"}
    )
    trim_padding: bool = field(
        default=True,
        metadata={
            "help": "cut all-padding columns from each chunk of the training forward passes (rsa.padding); "
            "false = TRL's own passes over the generation batch's full width"
        },
    )

    def __post_init__(self) -> None:
        if not self.dataset_files and not self.problems and not self.dataset_name:
            raise ConfigError(
                "no training data: set dataset_files (rows from `rsa augment`), dataset_name (a Hugging Face "
                "dataset in the same layout) or problems (a problem spec such as rg:basic_arithmetic)"
            )
        if isinstance(self.dataset_files, str):
            self.dataset_files = [self.dataset_files]
        if self.prompt_overflow not in ("error", "drop"):
            raise ConfigError(f"prompt_overflow must be 'error' or 'drop', got {self.prompt_overflow!r}")
        unknown = sorted(set(self.dataset_kinds or ()) - set(KINDS))
        if unknown:
            raise ConfigError(f"dataset_kinds {unknown} unknown; use a subset of {list(KINDS)}")
        if not 0.0 <= self.on_policy_aggregation <= 1.0:
            raise ConfigError(f"on_policy_aggregation must be in [0, 1], got {self.on_policy_aggregation}")
        if self.on_policy_aggregation:
            from rsa.seeds import KRange

            try:
                KRange.parse(self.on_policy_k, minimum=2, option="on_policy_k")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not 0.0 <= self.cotrained_aggregation <= 1.0:
            raise ConfigError(f"cotrained_aggregation must be in [0, 1], got {self.cotrained_aggregation}")
        if self.cotrained_aggregation and self.on_policy_aggregation:
            raise ConfigError("on_policy_aggregation and cotrained_aggregation are exclusive; set one of them to 0")
        if self.cotrained_aggregation:
            from rsa.seeds import KRange

            try:
                KRange.parse(self.cotrained_k, minimum=2, option="cotrained_k")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if not self.reward_funcs:
            raise ConfigError("reward_funcs is empty; use at least one reward, e.g. [task]")
        for limit in ("problems_limit", "dataset_limit", "problems_size"):
            value = getattr(self, limit)
            if value is not None and value < 1:
                raise ConfigError(f"{limit} must be >= 1, got {value}")


def generation_batch_error(
    per_device: int, world_size: int, steps: int, generation_batch_size: int | None, num_generations: int
) -> str | None:
    """Why the generation batch cannot hold whole prompt groups (None when it can); the text names the fix."""
    if num_generations is None or num_generations < 2:
        return (
            f"num_generations={num_generations}: GRPO needs >= 2 completions per prompt to compute advantages; "
            "set num_generations to 2 or more (the paper uses 4)"
        )
    global_batch = per_device * world_size
    if generation_batch_size is not None:
        if generation_batch_size % num_generations == 0:
            return None
        good = math.lcm(global_batch, num_generations)
        return (
            f"generation_batch_size={generation_batch_size} is not divisible by num_generations={num_generations}: "
            f"every prompt's {num_generations} completions must be in one generation batch. Set "
            f"generation_batch_size to a multiple of {good} (a multiple of num_generations and of "
            f"per_device_train_batch_size x processes = {global_batch})"
        )
    batch = global_batch * steps
    if batch % num_generations == 0:
        return None
    step = num_generations // math.gcd(num_generations, world_size * steps)
    return (
        f"the generation batch holds {batch} completions = per_device_train_batch_size {per_device} x "
        f"{world_size} process(es) x steps_per_generation {steps} (defaults to gradient_accumulation_steps), "
        f"which is not divisible by num_generations={num_generations}: every prompt's completions must be in "
        f"one generation batch. Set per_device_train_batch_size to a multiple of {step}, or change "
        f"gradient_accumulation_steps/steps_per_generation or the number of processes so that the product is "
        f"a multiple of {num_generations}"
    )


@dataclass
class GRPOAggConfig(GRPOConfig):
    """TRL's `GRPOConfig`, checking the generation batch first so that the error says what to change.

    The world size is read from `WORLD_SIZE` (set by `accelerate launch` and `torchrun`) because TRL's own
    check needs the device setup; a single process is assumed when it is unset.
    """

    def __post_init__(self) -> None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        batch = self.generation_batch_size if self.steps_per_generation is None else None
        error = generation_batch_error(self.per_device_train_batch_size, world_size, steps, batch, self.num_generations)
        if error:
            raise ConfigError(error)
        super().__post_init__()


def check_recipe_file(argv: Sequence[str]) -> None:
    """Raise ConfigError unless the `--config` file in `argv` (when given) is a readable YAML mapping."""
    import yaml

    argv = list(argv)
    if "--config" not in argv:
        return
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise ConfigError("--config needs a recipe path, e.g. --config configs/recipes/cpu_smoke.yaml")
    path = Path(argv[index + 1])
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; recipes live in configs/recipes/*.yaml")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"recipe {path} is not readable; fix its permissions")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping of option names to values")


def check_model_path(argv: Sequence[str]) -> None:
    """Raise ConfigError when the model (`--model_name_or_path`, else the recipe's) is a local path that is missing.

    A missing local folder would otherwise reach the Hub client as a repo id and fail with an unrelated
    "Repo id must use alphanumeric chars" error; the tiny smoke model gets the command that builds it.
    """
    import yaml

    argv = list(argv)
    model = None
    for i, item in enumerate(argv[:-1]):
        if item in ("--model_name_or_path", "--model-name-or-path"):
            model = argv[i + 1]
    if model is None and "--config" in argv[:-1]:
        recipe = Path(argv[argv.index("--config") + 1])
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else None
        model = data.get("model_name_or_path") if isinstance(data, dict) else None
    if not isinstance(model, str) or not model.startswith((".", "/", "~")):
        return  # a hub name (or nothing): the Hub client reports it
    path = Path(model).expanduser()
    if path.is_dir():
        return
    hint = f"build it with `rsa tiny-model --out {model}`" if "tiny" in path.name else "fix model_name_or_path"
    raise ConfigError(f"model_name_or_path {model}: no such directory; {hint}")


# ----- rewards -----------------------------------------------------------------------------------------------
def reward_length_shaping(prompts=None, completions=None, **kwargs) -> list[float]:
    """Completion length in characters / 1000, capped at 1. A smoke-test shaping term, never for real runs.

    A random tiny model scores 0 on every task, so every GRPO group has zero reward variance and zero
    advantage; this term gives groups variance so that a few CPU steps really move the parameters.
    """
    return [min(len(completion_text(c)) / 1000.0, 1.0) for c in completions]


SHAPING_REWARDS: dict[str, RewardFn] = {"length_shaping": reward_length_shaping}


def resolve_rewards(names: Sequence[str]) -> list[RewardFn]:
    """Reward functions by name: the `rsa.rewards` registry, `SHAPING_REWARDS`, or `module.function` paths."""
    out = []
    for name in names:
        if name in SHAPING_REWARDS:
            out.append(SHAPING_REWARDS[name])
        elif "." in name:
            module_name, _, attr = name.rpartition(".")
            try:
                out.append(getattr(importlib.import_module(module_name), attr))
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"reward_funcs: cannot import {name!r} ({exc})") from None
        else:
            try:
                out.append(get_reward(name))
            except ValueError as exc:
                raise ConfigError(
                    f"reward_funcs: {exc}; also available: task, {', '.join(SHAPING_REWARDS)}, module.function"
                ) from None
    return out


def _task_reward_names(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in SHAPING_REWARDS and "." not in n]


# ----- dataset -----------------------------------------------------------------------------------------------
def problems_to_rows(problems: Sequence[Any]) -> list[dict]:
    """Plain-prompt training rows (the core columns of `rsa.rows`) for `rsa.tasks.Problem`s."""
    return [problem_to_row(problem) for problem in problems]


def _read_files(paths: Sequence[str]):
    from datasets import load_dataset

    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"dataset_files: {missing} not found; build them with `rsa augment` or fix the paths")
    suffixes = {Path(p).suffix.lower() for p in paths}
    if len(suffixes) != 1 or suffixes - {".parquet", ".jsonl", ".json"}:
        raise ConfigError(f"dataset_files must all be .parquet or all .jsonl, got {sorted(suffixes)}")
    builder = "parquet" if suffixes == {".parquet"} else "json"
    if suffixes == {".jsonl"}:
        from rsa.jsonl import read_records

        for path in paths:  # a bad line is named by file and line, not by a datasets traceback
            try:
                for _ in read_records(path):
                    pass
            except ValueError as exc:
                raise ConfigError(f"dataset_files: {exc}") from None
    try:
        return load_dataset(builder, data_files=[str(p) for p in paths], split="train")
    except Exception as exc:  # datasets wraps every parse failure in DatasetGenerationError
        if type(exc).__name__ != "DatasetGenerationError":
            raise
        raise ConfigError(
            f"dataset_files {list(paths)}: cannot read them as {builder} ({exc.__cause__ or exc})"
        ) from None


def _normalize(dataset, source: str):
    """Add missing optional columns as nulls; ConfigError naming `source` when a required one is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"{source}: missing column(s) {missing}; training rows need {list(REQUIRED_COLUMNS)} "
            "(docs/FORMATS.md). Build the file with `rsa augment`, or pass plain problems via `problems:`"
        )
    for name in CORE_COLUMNS:
        if name not in dataset.column_names:
            dataset = dataset.add_column(name, [None] * len(dataset))
    return dataset


def load_training_dataset(args: GRPOAggScriptArguments):
    """The training rows named by `args` as one `datasets.Dataset` (filtered by kind, limited)."""
    from datasets import Dataset, concatenate_datasets, load_dataset

    from rsa.data import load_problems

    parts = []
    if args.dataset_files:
        parts.append((_read_files(args.dataset_files), f"dataset_files {args.dataset_files}"))
    if args.dataset_name:
        try:
            dataset = load_dataset(args.dataset_name, name=args.dataset_config, split=args.dataset_train_split)
        except FileNotFoundError as exc:
            raise ConfigError(f"dataset_name {args.dataset_name!r}: {exc}") from None
        parts.append((dataset, f"dataset_name {args.dataset_name}"))
    if args.problems:
        problems = load_problems(
            args.problems,
            limit=args.problems_limit,
            task=args.problems_task,
            size=args.problems_size,
            seed=args.problems_seed,
        )
        parts.append((Dataset.from_list(problems_to_rows(problems)), f"problems {args.problems}"))
    parts = [(_normalize(d, source), source) for d, source in parts]
    if len(parts) == 1:
        dataset = parts[0][0]
    else:  # mixing sources: keep the columns training uses, with one schema
        dataset = concatenate_datasets([d.select_columns(list(CORE_COLUMNS)).cast(features()) for d, _ in parts])
    if args.dataset_kinds:
        wanted = set(args.dataset_kinds)
        kinds = dataset["kind"]
        if any(k is None for k in kinds):
            raise ConfigError(
                "dataset_kinds is set but some rows have no `kind` (plain/aggregate); rebuild them with "
                "`rsa augment` or remove dataset_kinds"
            )
        dataset = dataset.select([i for i, k in enumerate(kinds) if k in wanted])
        if len(dataset) == 0:
            raise ConfigError(f"no rows of kind {sorted(wanted)} in the training data")
    if args.dataset_limit is not None:
        dataset = dataset.select(range(min(args.dataset_limit, len(dataset))))
    counts: dict[str, int] = {}
    for kind in dataset["kind"]:
        counts[str(kind)] = counts.get(str(kind), 0) + 1
    logger.info("training rows: %d (%s)", len(dataset), ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return dataset


def check_reward_columns(dataset, reward_names: Sequence[str], max_errors: int = 5) -> None:
    """Raise ConfigError unless every row has what the task rewards need (columns and per-task fields)."""
    if not _task_reward_names(reward_names):
        return
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ConfigError(
            f"rewards {list(reward_names)} need dataset column(s) {missing}; the training rows have "
            f"{dataset.column_names}. Rebuild the data with `rsa augment` (docs/FORMATS.md)"
        )
    columns = {c: dataset[c] for c in ("task", "answer", *META_COLUMNS) if c in dataset.column_names}
    errors = []
    for i in range(len(dataset)):
        try:
            row_to_problem({c: values[i] for c, values in columns.items()}, f"training row {i + 1}", default_id=str(i))
        except ValueError as exc:
            errors.append(str(exc))
            if len(errors) >= max_errors:
                break
    if errors:
        raise ConfigError(
            "training rows do not carry what the rewards need:\n  "
            + "\n  ".join(errors)
            + "\nFix the rows (rebuild with `rsa augment`), or drop them with dataset_kinds/dataset_limit"
        )


def model_max_length(model_name_or_path: str, training_args: GRPOConfig, revision: str | None = None) -> int | None:
    """The longest sequence (prompt + completion) the model takes: config.json, capped by vllm_max_model_length."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        model_name_or_path, revision=revision, trust_remote_code=training_args.trust_remote_code
    )
    config = getattr(config, "text_config", None) or config
    limit = getattr(config, "max_position_embeddings", None)
    if training_args.use_vllm and training_args.vllm_max_model_length:
        limit = min(limit or training_args.vllm_max_model_length, training_args.vllm_max_model_length)
    return limit


def prompt_lengths(dataset, tokenizer, chat_template_kwargs: dict | None = None, batch_size: int = 256) -> list[int]:
    """Token count of every row's prompt after the chat template (with the generation prompt)."""
    kwargs = chat_template_kwargs or {}
    lengths: list[int] = []
    prompts = dataset["prompt"]
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        encoded = tokenizer.apply_chat_template(batch, add_generation_prompt=True, tokenize=True, **kwargs)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        lengths.extend(len(x) for x in ids)
    return lengths


def on_main_process(compute: Callable[[], Any]) -> Any:
    """`compute()` run by process 0 alone, its result shared with every process (or its error raised on all).

    Used for work every process would otherwise repeat on the same data (tokenizing every training prompt);
    every process must call it at the same point, since it holds one broadcast.
    """
    if not _distributed():
        return compute()
    import torch.distributed as dist

    payload: list = [None]
    if dist.get_rank() == 0:
        try:
            payload = [(True, compute())]
        except Exception as exc:  # shared, then raised on every process: no process is left waiting
            payload = [(False, exc)]
    dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def check_prompt_lengths(
    dataset,
    tokenizer,
    max_completion_length: int,
    max_length: int | None,
    overflow: str,
    chat_template_kwargs: dict | None = None,
):
    """The dataset, after checking prompt tokens + max_completion_length <= max_length (ConfigError or drop)."""
    if max_length is None:
        logger.warning("the model config names no maximum length; prompt lengths are not checked")
        return dataset
    lengths = on_main_process(lambda: prompt_lengths(dataset, tokenizer, chat_template_kwargs))
    budget = max_length - max_completion_length
    if budget <= 0:
        raise ConfigError(
            f"max_completion_length={max_completion_length} leaves no room for a prompt in the model's maximum "
            f"length {max_length}; lower max_completion_length"
        )
    too_long = [i for i, n in enumerate(lengths) if n > budget]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    logger.info("longest prompt: %d tokens (row %d); budget %d = %d - max_completion_length %d",
                lengths[longest], longest + 1, budget, max_length, max_completion_length)  # fmt: skip
    if not too_long:
        return dataset
    if overflow == "drop":
        logger.warning("dropping %d of %d rows whose prompt exceeds %d tokens", len(too_long), len(dataset), budget)
        keep = sorted(set(range(len(dataset))) - set(too_long))
        if not keep:
            raise ConfigError(f"every prompt is longer than {budget} tokens; lower max_completion_length")
        return dataset.select(keep)
    kind = dataset["kind"][longest] if "kind" in dataset.column_names else None
    raise ConfigError(
        f"{len(too_long)} prompt(s) do not fit: the longest has {lengths[longest]} tokens (row {longest + 1}, kind "
        f"{kind}) and {lengths[longest]} + max_completion_length {max_completion_length} = "
        f"{lengths[longest] + max_completion_length} > the model's maximum length {max_length} (config.json "
        f"max_position_embeddings, or vllm_max_model_length). Lower max_completion_length, raise "
        f"vllm_max_model_length (up to the model's limit), rebuild the aggregation prompts with a smaller "
        f"candidate budget, or set prompt_overflow: drop to skip these rows"
    )


def check_dataset_size(dataset, training_args: GRPOConfig) -> None:
    """Raise ConfigError when the data holds fewer prompts than one generation batch needs."""
    needed = training_args.generation_batch_size // training_args.num_generations
    if len(dataset) < needed:
        raise ConfigError(
            f"the training data has {len(dataset)} rows but one generation batch needs {needed} distinct prompts "
            f"(generation_batch_size {training_args.generation_batch_size} / num_generations "
            f"{training_args.num_generations}); add rows or lower per_device_train_batch_size / "
            "gradient_accumulation_steps"
        )


# ----- resume ------------------------------------------------------------------------------------------------
def resume_checkpoint(training_args: GRPOConfig, auto_resume: bool = True) -> str | None:
    """The checkpoint to resume from: resume_from_checkpoint if set, else the last checkpoint-* in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    if training_args.resume_from_checkpoint:
        path = Path(training_args.resume_from_checkpoint)
        if not path.is_dir():
            raise ConfigError(f"resume_from_checkpoint {path} is not a directory")
        return str(path)
    if not auto_resume or not Path(training_args.output_dir).is_dir():
        return None
    last = get_last_checkpoint(training_args.output_dir)
    if last:
        logger.info("resuming from %s (set auto_resume: false or a new output_dir to start over)", last)
    return last


def _trained_step(folder: str | Path) -> tuple[int, float] | None:
    """(global_step, epoch) recorded in a folder's trainer_state.json, None when it holds none."""
    try:
        state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state["global_step"]), float(state.get("epoch") or 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_step(training_args: GRPOConfig, checkpoint: str | None, auto_resume: bool = True) -> int | None:
    """The step a training already finished at (None when there is training left): the state it would resume
    from (`checkpoint`, or with auto_resume the final trainer_state.json in output_dir) has reached max_steps,
    or num_train_epochs when max_steps is unset. Running again with a larger max_steps trains further."""
    folders = [checkpoint] if checkpoint else []
    if auto_resume and not training_args.resume_from_checkpoint:
        folders.append(training_args.output_dir)
    for folder in folders:
        trained = _trained_step(folder)
        if trained is None:
            continue
        step, epoch = trained
        if training_args.max_steps > 0 and step >= training_args.max_steps:
            return step
        if training_args.max_steps <= 0 and epoch >= training_args.num_train_epochs:
            return step
    return None


# ----- completion log ----------------------------------------------------------------------------------------
class RewardError(RuntimeError):
    """A reward function raised on some process; raised on every process at once, naming the process."""


class CompletionLogger:
    """Records every scored completion, and makes a reward failure on any process stop every process at once.

    `wrap(reward_funcs)` returns the same functions (same `__name__`) that also record their values; when
    the last one has scored a batch, the rows and any reward error of all processes are gathered (TRL calls
    the reward functions in list order on every process, so the gather is matched). A reward that raised
    on one process is logged there with its traceback and scored None meanwhile; at the gather, every
    process raises `RewardError` naming it, instead of the others waiting in the next collective until
    `ddp_timeout`. With a `path`, rank 0 appends one line per completion: prompt, completion, rewards,
    weighted reward, step (the trainer's global step when the batch was generated). A prompt is written
    once, on the first line that carries it (the first completion of its group); later lines carry only its
    `prompt_ref` (`read_completions` fills them in). Aggregation prompts run to ~34k tokens, and a group's
    G completions share one.
    """

    def __init__(self, path: str | Path | None, weights: Sequence[float] | None = None):
        self.path = Path(path) if path is not None else None
        self.weights = list(weights) if weights else None
        self._values: dict[str, list] = {}
        self._error: str | None = None
        self._seen: set[str] = set()

    def forget_from(self, checkpoint: str | Path) -> None:
        """Drop the logged rows of steps at or after `checkpoint`'s global step: resuming from it generates
        those steps again, and each step must be logged once."""
        trained = _trained_step(checkpoint)
        if trained is None or not self.path.is_file():
            return

        def later(line: str) -> bool:
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                return False  # not a row of ours: keep it
            return isinstance(step, int) and step >= trained[0]

        with self.path.open(encoding="utf-8") as fh:
            dropped = sum(later(line) for line in fh)
        if not dropped:
            return
        with self.path.open(encoding="utf-8") as fh, open_atomic(self.path) as out:
            for line in fh:
                if not later(line):
                    out.write(line if line.endswith("\n") else line + "\n")
        logger.info("%s: dropped %d rows of steps >= %d (generated again after the resume)", self.path, dropped,
                    trained[0])  # fmt: skip

    def wrap(self, reward_funcs: Sequence[Callable]) -> list[Callable]:
        """Recording wrappers around `reward_funcs`, in order."""
        names = [f.__name__ for f in reward_funcs]
        weights = self.weights or [1.0] * len(names)
        if len(weights) != len(names):
            raise ConfigError(f"reward_weights has {len(weights)} values for {len(names)} reward_funcs")
        wrapped = []
        for index, func in enumerate(reward_funcs):

            @functools.wraps(func)
            def recorded(*args, _func=func, _index=index, **kwargs):
                try:
                    values = _func(*args, **kwargs)
                except Exception as exc:  # raised for every process at the gather below
                    logger.exception("reward %s failed on process %d", names[_index], _rank())
                    self._error = self._error or f"{names[_index]}: {type(exc).__name__}: {exc}"
                    values = [None] * len(kwargs.get("completions") or [])
                self._values[names[_index]] = list(values)
                if _index == len(names) - 1:
                    self._flush(names, weights, kwargs)
                return values

            wrapped.append(recorded)
        return wrapped

    def _flush(self, names: list[str], weights: list[float], kwargs: dict) -> None:
        from accelerate.utils import gather_object

        prompts, completions = kwargs.get("prompts") or [], kwargs.get("completions") or []
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        rank = _rank()
        rows = []
        for i, completion in enumerate(completions if self.path is not None else []):
            rewards = {name: self._values[name][i] for name in names}
            total = sum(w * v for w, v in zip(weights, rewards.values()) if v is not None)
            rows.append(
                {
                    "step": step,
                    "rank": rank,
                    "prompt": prompts[i] if i < len(prompts) else None,
                    "completion": completion_text(completion),
                    "rewards": rewards,
                    "reward": total,
                    **{c: kwargs[c][i] for c in LOGGED_COLUMNS if c in kwargs},
                }
            )
        self._values = {}
        error, self._error = self._error, None
        gathered = gather_object([(rank, error, rows)]) if _distributed() else [(rank, error, rows)]
        failures = [f"process {r}: {e}" for r, e, _ in gathered if e]
        if failures:
            raise RewardError("reward function failed, stopping every process: " + "; ".join(failures))
        if rank != 0 or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for _, _, process_rows in gathered:
                for row in process_rows:
                    fh.write(json.dumps(self._by_reference(row), ensure_ascii=False, default=str) + "\n")
            fh.flush()

    def _by_reference(self, row: dict) -> dict:
        """`row` with `prompt_ref`, and without the prompt texts when an earlier line carried them."""
        texts = {key: row[key] for key in PROMPT_FIELDS if key in row}
        ref = hashlib.sha256(json.dumps(texts, sort_keys=True, default=str).encode()).hexdigest()[:16]
        row = {**row, "prompt_ref": ref}
        if ref in self._seen:
            return {key: value for key, value in row.items() if key not in PROMPT_FIELDS}
        self._seen.add(ref)
        return row


#: fields of a completion-log line written once per distinct prompt (see CompletionLogger)
PROMPT_FIELDS = ("prompt", "rollout_prompt")


def read_completions(path: str | Path) -> list[dict]:
    """The lines of a completion log, with the prompt texts of lines that carry only a `prompt_ref` filled in."""
    from rsa.jsonl import read_records

    texts: dict[str, dict] = {}
    rows = []
    for _, row in read_records(path):
        ref = row.get("prompt_ref")
        if ref is not None:
            if any(key in row for key in PROMPT_FIELDS):
                texts[ref] = {key: row[key] for key in PROMPT_FIELDS if key in row}
            elif ref in texts:
                row = {**row, **texts[ref]}
            else:
                raise ValueError(f"{path}: prompt_ref {ref} has no earlier line carrying its prompt")
        rows.append(row)
    return rows


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def completions_log_path(script_args: GRPOAggScriptArguments, output_dir: str) -> Path | None:
    """Where completions are logged (None when disabled)."""
    if not script_args.completions_log:
        return None
    path = Path(script_args.completions_log)
    return path if path.is_absolute() else Path(output_dir) / path


# ----- provenance --------------------------------------------------------------------------------------------
def provenance(script_args, training_args, model_args, dataset=None) -> dict:
    """The exact configuration of a run, as JSON-serialisable data (written next to checkpoints)."""
    record = {
        "script_args": asdict(script_args),
        "training_args": training_args.to_dict(),
        "model_args": asdict(model_args),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "argv": sys.argv,
        "packages": package_versions(),
    }
    if dataset is not None:
        kinds: dict[str, int] = {}
        for kind in dataset["kind"] if "kind" in dataset.column_names else []:
            kinds[str(kind)] = kinds.get(str(kind), 0) + 1
        record["data"] = {"rows": len(dataset), "kinds": kinds}
    return record


class ProvenanceCallback(TrainerCallback):
    """Writes `rsa_training.json` (the run's configuration) into output_dir and every saved checkpoint."""

    def __init__(self, record: dict):
        self.record = record

    def _write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PROVENANCE_FILE).write_text(json.dumps(self.record, indent=2, default=str) + "\n")

    def on_train_begin(self, args, state, control, **kwargs):
        from accelerate.state import AcceleratorState

        accelerator = AcceleratorState()  # set up by the trainer by now
        self.record["distributed_type"] = str(accelerator.distributed_type.value)
        self.record["num_processes"] = accelerator.num_processes
        plugin = getattr(accelerator, "deepspeed_plugin", None)
        self.record["zero_stage"] = getattr(plugin, "zero_stage", None)
        if state.is_world_process_zero:
            self._write(Path(args.output_dir))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                self._write(checkpoint)
