"""Run an RSA evaluation (or a budget-matched baseline) from an `EvalConfig`, without a command line.

    from rsa.configs import EvalConfig
    from rsa.evaluate import run_eval
    summaries = run_eval(EvalConfig(model="models/tiny", engine="hf", dataset="rg:basic_arithmetic",
                                    population=4, k=2, steps=3, out="runs/tiny"))

`prepare_eval` does everything that needs no model (model path, context and `max_new_tokens`, problems,
run-directory state, resume check); `execute_eval` builds the engine and runs the loop into the run
directory (`rsa.runs`). `run_eval` is the two in a row; `rsa eval` is a thin command line around them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rsa.configs import EvalConfig, auto_max_new_tokens, check_model, model_context_length, read_manifest

logger = logging.getLogger(__name__)


@dataclass
class EvalPlan:
    """A validated evaluation, ready to run: resolved config, problems, run directory, manifest."""

    config: EvalConfig
    problems: list
    engine_options: dict[str, Any]
    run_dir: Any  # rsa.runs.RunDirectory
    manifest: dict | None  # None until max_new_tokens is known (it needs the engine's context)
    steps_done: int  # committed steps of the run being resumed

    failures_done: int = 0  # failed requests in the committed steps (resume retries them)

    @property
    def complete(self) -> bool:
        """Whether the run directory already holds every step without failed requests (nothing to generate)."""
        return (
            self.config.resume
            and self.config.max_new_tokens is not None
            and self.steps_done >= self.num_steps
            and not self.failures_done
        )

    @property
    def num_steps(self) -> int:
        """Steps the run writes."""
        return self.config.loop_config(self.config.max_new_tokens or 1).num_steps


def resolve_max_new_tokens(config: EvalConfig, context: int | None) -> EvalConfig:
    """`config` with `max_new_tokens` set (auto: min(8192, context // 2)); ValueError when it leaves no room."""
    if context is None:
        return config
    if config.max_new_tokens is None:
        return replace(config, max_new_tokens=auto_max_new_tokens(context))
    if config.max_new_tokens >= context:
        raise ValueError(
            f"--max-new-tokens {config.max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{context} tokens; lower --max-new-tokens (or raise --max-model-len)"
        )
    return config


def prepare_eval(config: EvalConfig) -> EvalPlan:
    """Check everything that needs no model and load the problems; raises ValueError / FileNotFoundError."""
    from rsa.data import load_problems
    from rsa.runs import MANIFEST, RunDirectory

    options = config.engine_kwargs()
    config = replace(config, model=check_model(config.model, config.engine))
    context = config.max_model_len
    if context is None and config.engine != "openai":
        context = model_context_length(config.model)
    config = resolve_max_new_tokens(config, context)
    problems = load_problems(
        config.dataset, limit=config.limit, task=config.task, size=config.size, seed=config.data_seed
    )
    if not problems:
        raise ValueError(f"--dataset {config.dataset}: no problems")
    logger.info("%d problems from %s", len(problems), config.dataset)
    check_context_early(config, options, problems, context)

    run_dir = RunDirectory(config.out, log_prompts=config.log_prompts)
    if config.resume_if_exists:  # resume what is there, else start
        config = replace(config, resume=run_dir.exists())
    if run_dir.exists():
        read_manifest(Path(config.out) / MANIFEST)  # a clear error for a damaged manifest, before anything else
        if not config.resume:
            raise ValueError(f"{config.out} already holds a run; pass --resume to continue it or choose another --out")
    elif config.resume:
        raise FileNotFoundError(f"--resume: {config.out} holds no run (no {MANIFEST}); start it without --resume")
    else:
        run_dir.check_new(allow_existing=config.allow_existing_dir)  # not a folder of other files, unless asked
    run_dir.acquire()  # one writer per folder, refused before the engine loads
    plan = EvalPlan(config, problems, options, run_dir, manifest=None, steps_done=0)
    if config.max_new_tokens is not None:
        _set_manifest(plan)
    return plan


class _TokenCounter:
    """The two things `RSALoop.check_context` reads of an engine (its context and token counts), from a tokenizer."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer, self.max_model_len = tokenizer, max_model_len

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`, counted as the engines count them (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def check_context_early(config: EvalConfig, options: dict, problems: list, context: int | None) -> None:
    """ContextBudgetError (a ValueError) before any engine loads when a question cannot fit its prompts, where a
    tokenizer is at hand: the model's own (a local folder, or in the Hugging Face cache) or the openai engine's
    `tokenizer`; otherwise the same check runs once the engine is up."""
    from rsa.loop import RSALoop

    path = config.model
    if config.engine == "openai":  # as the engine does: its `tokenizer`, else the model when it is a local folder
        path = options.get("tokenizer") or (config.model if Path(config.model).is_dir() else None)
    if context is None or config.max_new_tokens is None or not path:
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=not Path(path).is_dir())
    except Exception as exc:  # not at hand (not cached, no tokenizer files): the engine's check will run
        logger.debug("no tokenizer at hand for the early context check (%s)", exc)
        return
    RSALoop(_TokenCounter(tokenizer, context), problems, config.loop_config()).check_context()


def _set_manifest(plan: EvalPlan) -> None:
    from rsa.runs import build_manifest, model_revision

    config = plan.config
    revision = model_revision(config.model, query_hub=config.engine != "openai")
    values = {k: v for k, v in sorted(asdict(config).items())}
    plan.manifest = build_manifest(
        values, model=config.model, engine=config.engine, revision=revision, problems=plan.problems, seed=config.seed
    )
    if config.resume:
        plan.run_dir.check_resumable(plan.manifest)
        # only once the run is known to match; --repair rebuilds metrics.jsonl from the population files first
        loop_config = config.loop_config()
        done = (
            plan.run_dir.repair_metrics(plan.problems, loop_config) if config.repair else plan.run_dir.completed_steps()
        )
        plan.steps_done = len(done)
        plan.failures_done = sum(s.get("failed_requests", 0) for s in done)


def execute_eval(plan: EvalPlan, engine: Any = None) -> list[dict]:
    """Build the engine (unless `engine` is given; then it is not closed), run the evaluation, return the
    per-step summaries. The run directory is created only once the engine is up and every prompt fits.

    With `config.report_to`, the per-step summaries also go to those trackers (`rsa.tracking`).
    """
    try:
        summaries = _evaluate(plan, engine)
    finally:
        plan.run_dir.release()  # the folder's lock, taken by prepare_eval
    if plan.config.report_to:
        from rsa.tracking import MetricsTracker

        config = plan.config
        tracker = MetricsTracker(config.report_to, plan.run_dir.path, Path(config.out).name, asdict(config))
        try:
            tracker.log_steps(summaries)
        finally:
            tracker.close()
    return summaries


def _evaluate(plan: EvalPlan, engine: Any = None) -> list[dict]:
    from rsa.loop import RSALoop
    from rsa.runs import run_evaluation

    if plan.complete:
        return run_evaluation(None, plan.problems, plan.config.loop_config(), plan.run_dir, progress=False)
    owned = engine is None
    if owned:
        from rsa.engines import make_engine

        engine = make_engine(plan.config.engine, plan.config.model, **plan.engine_options)
    try:
        if plan.manifest is None:  # the context was unknown before the engine (a server without --max-model-len)
            plan.config = resolve_max_new_tokens(plan.config, engine.max_model_len)
            _set_manifest(plan)
            if plan.complete:
                return run_evaluation(None, plan.problems, plan.config.loop_config(), plan.run_dir, progress=False)
        loop_config = plan.config.loop_config()
        RSALoop(engine, plan.problems, loop_config).check_context()
        if not plan.config.resume:
            plan.run_dir.create(plan.manifest, plan.problems, allow_existing=plan.config.allow_existing_dir)
        return run_evaluation(engine, plan.problems, loop_config, plan.run_dir, progress=plan.config.progress)
    finally:
        if owned:
            engine.close()


def run_eval(config: EvalConfig, engine: Any = None) -> list[dict]:
    """Validate `config`, then evaluate into `config.out`; returns one metrics summary per step."""
    return execute_eval(prepare_eval(config), engine)
