"""Evaluation: RSA (or a budget-matched baseline) run into a run directory (`rsa.runs`).

    from rsa.configs import EvalConfig
    from rsa.evaluate import run_eval
    summaries = run_eval(EvalConfig(model="models/tiny", engine="hf", dataset="rg:basic_arithmetic",
                                    population=4, k=2, steps=3, out="runs/tiny"))

`run_eval` is the entry from a config, and `rsa eval` is a thin command line around it: `prepare_eval` does
everything that needs no model (model path, context and `max_new_tokens`, problems, the `LoopConfig`, the run
folder's state and resume check), then `run_eval` builds the engine and calls `evaluate`.

`evaluate` is the driver over a run folder, the one that `rsa eval`, the toy world (`rsa.toyworld.pipeline`) and
the benchmarks all call: it starts a new run once every prompt fits, or continues a kept one, commits each
finished (problem, step) group and each step, and writes the final answers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rsa.configs import EvalConfig, auto_max_new_tokens, check_model, model_context_length, read_manifest
from rsa.engines.base import Engine
from rsa.jsonl import read_records, write_jsonl_atomic
from rsa.loop import (
    GroupResult,
    LoopConfig,
    Population,
    RSALoop,
    evaluated_population,
    final_answers,
    without_compute_defaults,
)
from rsa.metrics import step_metrics
from rsa.progress import Progress
from rsa.provenance import model_revision
from rsa.runs import MANIFEST, METRICS, PER_PROBLEM_DIR, POPULATION_DIR, RunDirectory, build_manifest
from rsa.tasks import Problem

logger = logging.getLogger(__name__)

#: seconds between progress log lines when no progress bar is shown
PROGRESS_LOG_SECONDS = 60.0


# ----- the driver over a run folder ---------------------------------------------------------------------------
def evaluate(
    engine: Engine | None,
    problems: Sequence[Problem],
    config: LoopConfig,
    run_dir: RunDirectory,
    *,
    manifest: dict | None = None,
    done: Sequence[dict] | None = None,
    progress: bool = True,
    repair: bool = False,
    allow_existing: bool = False,
) -> list[dict]:
    """Run (or continue) `config` on `problems` into `run_dir`; returns every step's metrics line.

    A folder that holds no run gets a new one with `manifest` (`RunDirectory.create`), made only once `engine`
    is given and every prompt fits it (ContextBudgetError otherwise, and nothing is written). A folder that
    holds a run is continued as it is (the caller checks first that the run may be resumed, see
    `resumable_steps`): committed steps and committed (problem, step) groups are kept, not regenerated; steps
    holding failed requests are reopened and only the failed members (and what was built on them) run again.
    `done`: the committed steps' metrics lines when the caller has read them already (they are read once per
    run); otherwise they are read here, after rebuilding `metrics.jsonl` when `repair` (`repair_metrics`).
    `engine` may be None when nothing is left to generate.
    """
    loop = None
    if engine is not None:
        loop = RSALoop(engine, problems, config)
        loop.check_context()  # before the folder is made or changed
        if not run_dir.exists():
            if manifest is None:
                raise ValueError(f"{run_dir.path} holds no run, and no manifest was given to start one")
            run_dir.create(manifest, problems, allow_existing=allow_existing)
    run_dir.remove_stale_temporaries()
    if done is None:
        done = repair_metrics(run_dir, problems, config) if repair else run_dir.completed_steps()
    done = list(done)
    if len(done) > config.num_steps:
        raise ValueError(f"{run_dir.path} holds {len(done)} steps, more than this run's {config.num_steps}")
    failed = [s["step"] for s in done if s.get("failed_requests")]
    if failed and engine is not None:
        logger.info(
            "%s: step(s) %s hold failed requests; reopening from step %d to retry them",
            run_dir.path, ", ".join(map(str, failed)), failed[0],
        )  # fmt: skip
        run_dir.reopen(failed[0], problems, config, len(done))
        done = done[: failed[0] - 1]
    committed = len(done)
    for step in range(1, committed + 1):  # left behind by a kill between a step's commit and its cleanup
        run_dir.pending_file(step).unlink(missing_ok=True)
    keep = range(1, committed + 1) if config.spec.pooled else range(committed, committed + 1)
    history = [run_dir.load_population(step, problems, config) for step in keep if step >= 1]
    stored: dict[tuple[int, int], Population] = {}
    for step in range(committed + 1, config.num_steps + 1):
        for pi, members in run_dir.read_pending(step, len(problems)).items():
            stored[(step, pi)] = members
    summaries = done
    if committed == config.num_steps:
        if committed:
            logger.info("%s: all %d steps are already done", run_dir.path, committed)
        run_dir.write_final(
            final_answers(problems, evaluated_population(config.method, history), config.final, config.seed),
            config.final,
        )
        return summaries
    if loop is None:
        raise ValueError(f"{run_dir.path}: steps {committed + 1}..{config.num_steps} remain but no engine was given")
    if committed or stored:
        logger.info(
            "resuming %s after step %d of %d (%d (problem, step) groups kept from pending files)",
            run_dir.path, committed, config.num_steps, len(stored),
        )  # fmt: skip
    committer = _StepCommitter(run_dir, problems, config, history, summaries)
    remaining = sum(config.generations_at(t) * len(problems) for t in range(committed + 1, config.num_steps + 1))
    reusable = sum(1 for members in stored.values() for m in members if not m.failed)
    bar = Progress(
        max(remaining - reusable, 0),
        len(problems),
        config.num_steps,
        enabled=progress,
        log_every=PROGRESS_LOG_SECONDS,
        desc=f"{config.method} ({loop.schedule})",
    )
    for step in range(1, committed + 1):
        bar.start_step(step, len(problems))
    try:
        loop.execute(
            committer,
            start_step=committed + 1,
            previous=history[-1] if history else None,
            stored=stored,
            progress=bar,
        )
    finally:
        bar.close()
    if committer.next_step != config.num_steps + 1:
        raise RuntimeError(f"the loop stopped before step {committer.next_step} was complete for every problem")
    run_dir.write_final(
        final_answers(problems, evaluated_population(config.method, committer.history), config.final, config.seed),
        config.final,
    )
    return summaries


def resumable_steps(
    run_dir: RunDirectory, manifest: dict, problems: Sequence[Problem], config: LoopConfig, *, repair: bool = False
) -> list[dict]:
    """The committed steps of the run in `run_dir`, once `manifest` is known to resume it (`check_resumable`, which
    also makes this process the folder's only writer); `repair` rebuilds `metrics.jsonl` first (`repair_metrics`)."""
    run_dir.check_resumable(manifest)
    return repair_metrics(run_dir, problems, config) if repair else run_dir.completed_steps()


def repair_metrics(run_dir: RunDirectory, problems: Sequence[Problem], config: LoopConfig) -> list[dict]:
    """Rebuild `metrics.jsonl` and the per-problem files from the complete population files, in step order.

    The old `metrics.jsonl` is kept as `metrics.jsonl.bad`; wall times are taken from its readable
    lines. Stops at the first step whose population file is missing or incomplete.
    """
    path = run_dir.path / METRICS
    old: dict[int, dict] = {}
    if path.exists():
        for _, record in read_records(path, errors=[]):  # unreadable lines are what is being repaired
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                old.setdefault(record["step"], record)
        path.replace(path.with_name(METRICS + ".bad"))
    history: list[list[Population]] = []
    summaries = []
    for step in range(1, config.num_steps + 1):
        if not run_dir.step_file(POPULATION_DIR, step).exists():
            break
        try:
            populations = run_dir.load_population(step, problems, config)
        except (ValueError, KeyError) as exc:
            logger.warning("repair: stopping before step %d: %s", step, exc)
            break
        history = history + [populations] if config.spec.pooled else [populations]
        summary, records = _summarise(step, problems, config, history, old.get(step, {}).get("wall_time_s"))
        write_jsonl_atomic(run_dir.step_file(PER_PROBLEM_DIR, step), records)
        summaries.append(summary)
    write_jsonl_atomic(path, summaries)
    logger.warning(
        "%s: rebuilt from the population files: %d committed step(s); the old file is %s.bad",
        path,
        len(summaries),
        METRICS,
    )
    return summaries


def failure_summary(summaries: Sequence[dict]) -> str | None:
    """One line counting the failed requests a run still holds, or None when there are none."""
    per_step = {s["step"]: s.get("failed_requests", 0) for s in summaries if s.get("failed_requests")}
    if not per_step:
        return None
    where = ", ".join(f"step {step}: {count}" for step, count in per_step.items())
    return (
        f"{sum(per_step.values())} request(s) failed after retries ({where}); they score 0 and are listed with their "
        "error in population/step_*.jsonl; rerun with --resume to retry only them"
    )


def _summarise(
    step: int,
    problems: Sequence[Problem],
    config: LoopConfig,
    history: Sequence[Sequence[Population]],
    wall: float | None,
) -> tuple[dict, list[dict]]:
    """The metrics line and per-problem records of `step` (the last entry of `history`)."""
    # members an early-stopped problem carries on were generated at an earlier step: not this step's work
    generated = [[m for m in population if m.carried_from is None] for population in history[-1]]
    summary, records = step_metrics(
        step,
        problems,
        evaluated_population(config.method, history),
        tokens_generated=sum(m.num_tokens for population in generated for m in population),
        wall_time_s=wall,
    )
    summary = {"step": step, "method": config.method, **summary}
    summary["truncated_candidates"] = sum(m.truncated_parents for population in generated for m in population)
    summary["failed_requests"] = sum(m.failed for population in generated for m in population)
    if config.stop_agreement is not None:
        stopped = [population[0].carried_from if population else None for population in history[-1]]
        summary["problems_stopped"] = sum(s is not None for s in stopped)
        for record, stopped_at in zip(records, stopped):
            record["stopped_at"] = stopped_at
    return summary, records


class _StepCommitter:
    """Collects finished (problem, step) groups, commits each group, and each step once all problems have it."""

    def __init__(self, run_dir: RunDirectory, problems: Sequence[Problem], config: LoopConfig, history, summaries):
        self.run_dir = run_dir
        self.problems = problems
        self.config = config
        self.history: list[list[Population]] = history
        self.summaries: list[dict] = summaries
        self.next_step = len(summaries) + 1
        self.groups: dict[int, dict[int, Population]] = {}
        self.times: dict[int, list[float]] = {}  # step -> [first request sent, last request back]

    def __call__(self, result: GroupResult) -> None:
        step, pi = result.step, result.problem_index
        if result.regenerated:
            self.run_dir.append_pending(step, self.problems[pi], pi, result.members)
            span = self.times.setdefault(step, [result.started, result.finished])
            span[0], span[1] = min(span[0], result.started), max(span[1], result.finished)
        self.groups.setdefault(step, {})[pi] = result.members
        while len(self.groups.get(self.next_step, {})) == len(self.problems):
            self.commit(self.next_step)
            self.next_step += 1

    def commit(self, step: int) -> None:
        groups = self.groups.pop(step)
        generated = [groups[pi] for pi in range(len(self.problems))]
        self.history = self.history + [generated] if self.config.spec.pooled else [generated]
        span = self.times.pop(step, None)
        wall = span[1] - span[0] if span else 0.0
        summary, records = _summarise(step, self.problems, self.config, self.history, wall)
        self.run_dir.commit_step(step, self.problems, generated, records, summary)
        self.summaries.append(summary)
        logger.info(
            "step %d/%d: pass@1 %.4f  pass@N %.4f  majority %.4f  mean length %.0f  failed %d  (%.1f s)",
            step, self.config.num_steps, summary["pass_at_1"], summary["pass_at_n"], summary["majority"],
            summary["mean_length"], summary["failed_requests"], wall,
        )  # fmt: skip


# ----- from a config ------------------------------------------------------------------------------------------
@dataclass
class EvalPlan:
    """A validated evaluation, ready to run: resolved config, problems, run directory, and (once `max_new_tokens`
    is known, which may need the engine's context) the loop config, the manifest and the committed steps."""

    config: EvalConfig
    problems: list[Problem]
    engine_options: dict[str, Any]
    run_dir: RunDirectory
    loop_config: LoopConfig | None = None  # built once, when max_new_tokens is known
    manifest: dict | None = None
    done: list[dict] = field(default_factory=list)  # committed steps' metrics lines of the run being resumed

    @property
    def complete(self) -> bool:
        """Whether the run directory already holds every step without failed requests (nothing to generate)."""
        return (
            self.config.resume
            and self.loop_config is not None
            and len(self.done) >= self.loop_config.num_steps
            and not any(s.get("failed_requests") for s in self.done)
        )


def resolve_max_new_tokens(max_new_tokens: int | None, context: int | None) -> int | None:
    """`max_new_tokens` for a model `context` (auto when None: min(8192, context // 2)); ValueError when it leaves
    no room for a prompt. Unchanged when the context is unknown."""
    if context is None:
        return max_new_tokens
    if max_new_tokens is None:
        return auto_max_new_tokens(context)
    if max_new_tokens >= context:
        raise ValueError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
            f"{context} tokens; lower --max-new-tokens (or raise --max-model-len)"
        )
    return max_new_tokens


def prepare_eval(config: EvalConfig) -> EvalPlan:
    """Check everything that needs no model and load the problems; raises ValueError / FileNotFoundError."""
    from rsa.data import load_problems

    options = config.engine_kwargs()
    model = check_model(config.model, config.engine)
    context = config.max_model_len
    if context is None and config.engine != "openai":
        context = model_context_length(model)
    config = replace(config, model=model, max_new_tokens=resolve_max_new_tokens(config.max_new_tokens, context))
    problems = load_problems(
        config.dataset, limit=config.limit, task=config.task, size=config.size, seed=config.data_seed
    )
    if not problems:
        raise ValueError(f"--dataset {config.dataset}: no problems")
    logger.info("%d problems from %s", len(problems), config.dataset)
    plan = EvalPlan(config, problems, options, RunDirectory(config.out, log_prompts=config.log_prompts))
    if config.max_new_tokens is not None:
        plan.loop_config = config.loop_config()
        check_context_early(config, options, problems, context, plan.loop_config)

    run_dir = plan.run_dir
    if config.resume_if_exists:  # resume what is there, else start
        config = plan.config = replace(config, resume=run_dir.exists())
    if run_dir.exists():
        read_manifest(Path(config.out) / MANIFEST)  # a clear error for a damaged manifest, before anything else
        if not config.resume:
            raise ValueError(f"{config.out} already holds a run; pass --resume to continue it or choose another --out")
    elif config.resume:
        raise FileNotFoundError(f"--resume: {config.out} holds no run (no {MANIFEST}); start it without --resume")
    else:
        run_dir.check_new(allow_existing=config.allow_existing_dir)  # not a folder of other files, unless asked
    run_dir.acquire()  # one writer per folder, refused before the engine loads
    if plan.loop_config is not None:
        _set_manifest(plan)
    return plan


class _TokenCounter:
    """The two things `RSALoop.check_context` reads of an engine (its context and token counts), from a tokenizer."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer, self.max_model_len = tokenizer, max_model_len

    def count_tokens(self, text: str) -> int:
        """Tokens of `text`, counted as the engines count them (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def check_context_early(
    config: EvalConfig, options: dict, problems: list, context: int | None, loop_config: LoopConfig
) -> None:
    """ContextBudgetError (a ValueError) before any engine loads when a question cannot fit its prompts, where a
    tokenizer is at hand: the model's own (a local folder, or in the Hugging Face cache) or the openai engine's
    `tokenizer`; otherwise the same check runs once the engine is up."""
    path = config.model
    if config.engine == "openai":  # as the engine does: its `tokenizer`, else the model when it is a local folder
        path = options.get("tokenizer") or (config.model if Path(config.model).is_dir() else None)
    if context is None or not path:
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=not Path(path).is_dir())
    except Exception as exc:  # not at hand (not cached, no tokenizer files): the engine's check will run
        logger.debug("no tokenizer at hand for the early context check (%s)", exc)
        return
    RSALoop(_TokenCounter(tokenizer, context), problems, loop_config).check_context()


#: options never written to a manifest or a tracker: a resumed run takes them from its command line or environment
SECRET_OPTIONS = ("api_key",)


def recorded_config(config: EvalConfig) -> dict:
    """The run's options as its manifest and trackers record them: sorted, secrets (`SECRET_OPTIONS`) as None."""
    values = {k: v for k, v in sorted(asdict(config).items())}
    for name in SECRET_OPTIONS:
        if values.get(name) is not None:
            values[name] = None
    return values


def _set_manifest(plan: EvalPlan) -> None:
    """The run's manifest; on resume, the check that it matches the run, and the run's committed steps."""
    config = plan.config
    revision = model_revision(config.model, query_hub=config.engine != "openai")
    plan.manifest = build_manifest(
        without_compute_defaults(recorded_config(config)),
        model=config.model,
        engine=config.engine,
        revision=revision,
        problems=plan.problems,
        seed=config.seed,
    )
    if config.resume:  # --repair rebuilds metrics.jsonl only once the run is known to match
        plan.done = resumable_steps(plan.run_dir, plan.manifest, plan.problems, plan.loop_config, repair=config.repair)


def run_eval(config: EvalConfig | EvalPlan, engine: Engine | None = None) -> list[dict]:
    """Evaluate into `config.out` (from a config, or from the plan `prepare_eval` made of one); returns one metrics
    summary per step.

    The engine is built here unless `engine` is given (then it is not closed); the run directory is created
    only once the engine is up and every prompt fits. With `report_to`, the per-step summaries also go to
    those trackers (`rsa.tracking`).
    """
    plan = config if isinstance(config, EvalPlan) else prepare_eval(config)
    owned = engine is None and not plan.complete
    try:
        if owned:
            from rsa.engines import make_engine

            engine = make_engine(plan.config.engine, plan.config.model, **plan.engine_options)
        if plan.loop_config is None:  # the context was unknown before the engine (a server without --max-model-len)
            max_new_tokens = resolve_max_new_tokens(plan.config.max_new_tokens, engine.max_model_len)
            plan.config = replace(plan.config, max_new_tokens=max_new_tokens)
            plan.loop_config = plan.config.loop_config()
            _set_manifest(plan)
        summaries = evaluate(
            None if plan.complete else engine,
            plan.problems,
            plan.loop_config,
            plan.run_dir,
            manifest=plan.manifest,
            done=plan.done,
            progress=plan.config.progress and not plan.complete,
            allow_existing=plan.config.allow_existing_dir,
        )
    finally:
        if owned and engine is not None:
            engine.close()
        plan.run_dir.release()  # the folder's lock, taken by prepare_eval
    if plan.config.report_to:
        from rsa.tracking import MetricsTracker

        values = plan.config
        tracker = MetricsTracker(values.report_to, plan.run_dir.path, Path(values.out).name, recorded_config(values))
        try:
            tracker.log_steps(summaries)
        finally:
            tracker.close()
    return summaries
