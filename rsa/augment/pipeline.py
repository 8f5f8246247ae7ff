"""The whole `rsa augment` build: check, sample candidate shards (resumable), build rows, write the dataset."""

from __future__ import annotations

import logging
from pathlib import Path

from rsa.augment.budget import LengthBudget, default_max_model_len
from rsa.augment.build import BuildReport, build_examples
from rsa.augment.candidates import CandidateStore
from rsa.augment.config import DATASET_FILE, REPORT_FILE, CandidateConfig, MixConfig, check_gold_answers, check_k_fits
from rsa.augment.output import write_dataset
from rsa.engines.base import Engine
from rsa.jsonl import write_json_atomic

logger = logging.getLogger(__name__)


def build_augmented_dataset(
    config: CandidateConfig,
    mix: MixConfig | None,
    out_dir: str | Path,
    *,
    tokenizer: str | None = None,
    max_model_len: int | None = None,
    max_completion_length: int = 8192,
    resume: bool = False,
    engine: Engine | None = None,
    progress: bool = True,
) -> BuildReport:
    """Load, check, sample (resumable shards), build and write `OUT/train.parquet`; returns the report.

    `mix` None builds a MixConfig from `max_model_len` (None: the model config's context length) and
    `max_completion_length` with default mixture options. `engine` is used as given (not closed);
    otherwise one is made with `make_engine` only if some shard is missing, and closed after sampling.
    """
    from rsa.data import load_problems

    # 1. everything that needs no model
    if mix is None:
        mix = MixConfig(
            max_model_len=max_model_len or default_max_model_len(tokenizer or config.model),
            max_completion_length=max_completion_length,
        )
    if mix.aggregate_fraction > 0:
        check_k_fits(mix.k, config.num_candidates)
    problems = load_problems(
        config.dataset, limit=config.limit, task=config.task, size=config.size, seed=config.data_seed
    )
    if not problems:
        raise ValueError(f"dataset {config.dataset!r} holds no problems")
    check_gold_answers(problems)
    logger.info("%d problems from %s", len(problems), config.dataset)
    budget = LengthBudget.from_pretrained(tokenizer or config.model, mix.max_model_len, mix.max_completion_length)
    budget.check_questions(problems, mix.k.high if mix.aggregate_fraction > 0 else None, mix.overflow)
    store = CandidateStore(out_dir)
    store.prepare(config, problems, resume=resume)

    # 2. candidates, shard by shard
    missing = store.missing_shards(problems, config.shard_size, config.num_candidates)
    if missing:
        owned = engine is None
        if owned:
            from rsa.engines import make_engine

            engine = make_engine(config.engine, config.model, **config.engine_options)
        try:
            store.generate(engine, problems, config, missing, progress=progress)
        finally:
            if owned:
                engine.close()
    else:
        logger.info(
            "all %d candidate shards present; building the dataset", store.num_shards(len(problems), config.shard_size)
        )

    # 3. examples and the dataset
    candidates = store.load(problems, config.shard_size, config.num_candidates)
    rows, report = build_examples(
        problems, candidates, mix, budget, reference_model=config.model, sampling_seed=config.seed
    )
    write_dataset(rows, store.out / DATASET_FILE)
    write_json_atomic(store.out / REPORT_FILE, report.to_dict())
    store.record_build(mix, report.plain + report.aggregate)
    return report
