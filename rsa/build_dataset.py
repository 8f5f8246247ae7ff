"""Build (or import) an aggregation-aware RL dataset from an `AugmentConfig`, without a command line.

    from rsa.configs import AugmentConfig
    from rsa.build_dataset import run_augment
    report = run_augment(AugmentConfig(model="models/tiny", engine="hf", dataset="rg:basic_arithmetic",
                                       size=8, num_candidates=4, k="2", out="data/agg-tiny"))

`augment_configs` turns the options into the `rsa.augment` configs (`CandidateConfig`, `MixConfig`),
resolving the defaults that depend on the models: the training length budget (`train_context_len`, from
the training model's config), `max_completion_length` (min(8192, half of it)) and the candidates'
`max_new_tokens` (= `max_completion_length`), which must also fit the generation engine's context.
`rsa augment` and data/build_agg_dataset.py are thin command lines around `run_augment`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rsa.configs import AugmentConfig, auto_max_new_tokens, check_model, model_context_length, read_manifest

logger = logging.getLogger(__name__)


def _train_context_len(config: AugmentConfig, name: str) -> int:
    if config.train_context_len is not None:
        return config.train_context_len
    context = model_context_length(name)
    if context is None:
        raise ValueError(
            f"--train-context-len not given and the context of {name!r} is unknown (no max_position_embeddings in "
            "a local or cached config.json); pass --train-context-len"
        )
    return context


def augment_configs(config: AugmentConfig) -> tuple[Any, Any, str | None]:
    """The `(CandidateConfig, MixConfig, tokenizer)` of a build; ValueError for values that cannot work."""
    from rsa.augment import CandidateConfig, MixConfig

    model = check_model(config.model, config.engine)
    tokenizer = config.tokenizer
    train_context = _train_context_len(config, tokenizer or model)
    completion = config.max_completion_length or auto_max_new_tokens(train_context)
    if completion >= train_context:
        raise ValueError(
            f"--max-completion-length {completion} leaves no room for a prompt in the training context of "
            f"{train_context} tokens; lower --max-completion-length or raise --train-context-len"
        )
    new_tokens = config.max_new_tokens or completion
    engine_context = config.max_model_len
    if engine_context is None and config.engine != "openai":
        engine_context = model_context_length(model)
    if engine_context is not None and new_tokens >= engine_context:
        raise ValueError(
            f"--max-new-tokens {new_tokens} (candidate length) leaves no room for a prompt in the engine's context "
            f"of {engine_context} tokens; lower --max-new-tokens / --max-completion-length or raise --max-model-len"
        )
    candidates = CandidateConfig(
        model=model,
        dataset=config.dataset,
        engine=config.engine,
        engine_options=config.engine_kwargs(),
        num_candidates=config.num_candidates,
        temperature=config.temperature,
        top_p=config.top_p,
        candidate_max_tokens=new_tokens,
        seed=config.seed,
        shard_size=config.shard_size,
        task=config.task,
        limit=config.limit,
        size=config.size,
        data_seed=config.data_seed,
    )
    mix = MixConfig(
        max_model_len=train_context,
        max_completion_length=completion,
        aggregate_fraction=config.aggregate_fraction,
        k=config.k,
        sets_per_problem=config.sets_per_problem,
        balance=config.balance,
        shortfall=config.shortfall,
        overflow=config.overflow,
        seed=config.seed,
    )
    return candidates, mix, tokenizer


def check_build_dir(config: AugmentConfig) -> None:
    """Raise ValueError naming the file when `--resume` would read a damaged build manifest."""
    manifest = Path(config.out) / "manifest.json"  # rsa.augment's build manifest
    if config.resume and manifest.exists():
        read_manifest(manifest)


def run_augment(config: AugmentConfig, engine: Any = None):
    """Import (`config.import_file`) or build the dataset into `config.out`; returns the report.

    `engine`, when given, samples the candidates (and is not closed); otherwise one is built if a shard is
    missing. Raises ValueError / FileNotFoundError for bad input before any engine is built.
    """
    from rsa.augment import LengthBudget, build_augmented_dataset, import_verl

    out = Path(config.out)
    if config.import_file is not None:
        budget = None
        if config.tokenizer:
            train_context = _train_context_len(config, config.tokenizer)
            completion = config.max_completion_length or auto_max_new_tokens(train_context)
            budget = LengthBudget.from_pretrained(config.tokenizer, train_context, completion)
        return import_verl(config.import_file, out, budget=budget)
    candidates, mix, tokenizer = augment_configs(config)
    check_build_dir(config)
    return build_augmented_dataset(
        candidates, mix, out, tokenizer=tokenizer, resume=config.resume, engine=engine, progress=config.progress
    )
