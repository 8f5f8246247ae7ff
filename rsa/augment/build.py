"""Training rows from problems and their candidates: plain rows, fitted aggregation rows, the build report."""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from rsa.augment.budget import LengthBudget, format_histogram
from rsa.augment.candidates import Candidate
from rsa.augment.config import CLASSES, POOL_FACTOR, MixConfig, check_gold_answers, check_k_fits
from rsa.augment.sets import CandidateSet, cluster_labels, majority_is_correct, select_sets, set_class
from rsa.fitting import ContextBudgetError
from rsa.rows import problem_to_row
from rsa.seeds import draw_aggregation_sets
from rsa.tasks import Problem, Task, get_task
from rsa.types import Conversation

logger = logging.getLogger(__name__)


@dataclass
class BuildReport:
    """What a build produced: counts, achieved vs target fractions, shortfalls, length figures."""

    problems: int = 0
    plain: int = 0
    aggregate: int = 0
    aggregate_fraction_target: float = 0.0
    aggregate_fraction: float = 0.0
    classes: dict[str, int] = field(default_factory=dict)
    class_fractions: dict[str, float] = field(default_factory=dict)
    class_targets: dict[str, float] | None = None
    sets_drawn: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems_short_of_sets: int = 0
    capped_prompts: int = 0
    capped_candidates: int = 0
    dropped_over_budget: int = 0
    prompt_limit: int = 0
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    histogram: str = ""

    def summary(self) -> str:
        """A multi-line text summary for the console."""
        lines = [
            f"problems: {self.problems}; rows: {self.plain + self.aggregate} "
            f"({self.plain} plain, {self.aggregate} aggregate)",
            f"aggregate fraction: {self.aggregate_fraction:.3f} (target {self.aggregate_fraction_target:.3f})",
        ]
        if self.aggregate:
            parts = []
            for c in CLASSES:
                target = f", target {self.class_targets[c]:.3f}" if self.class_targets else ""
                parts.append(f"{c} {self.classes.get(c, 0)} ({self.class_fractions.get(c, 0.0):.3f}{target})")
            lines.append("aggregation sets: " + "; ".join(parts))
            drawn = ", ".join(f"{c} {self.sets_drawn.get(c, 0)}" for c in CLASSES)
            lines.append(f"distinct sets drawn to choose from: {drawn}")
        lines.append(
            f"length: {self.capped_prompts} prompt(s) with {self.capped_candidates} candidate(s) capped, "
            f"{self.dropped_over_budget} set(s) dropped as over budget; prompt limit {self.prompt_limit} tokens"
        )
        if self.prompt_tokens:
            t = self.prompt_tokens
            lines.append(f"prompt tokens: min {t['min']:.0f}, median {t['median']:.0f}, max {t['max']:.0f}")
        lines.append(self.histogram)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready values."""
        return asdict(self)


def base_row(problem: Problem, prompt: Conversation, kind: str, reference_model: str, seed: int | None) -> dict:
    """The columns every built row has: the problem's (`rsa.rows.problem_to_row`) plus its provenance."""
    return {**problem_to_row(problem, prompt, kind), "reference_model": reference_model, "seed": seed}


def build_examples(
    problems: Sequence[Problem],
    candidates: Sequence[Sequence[Candidate]],
    mix: MixConfig,
    budget: LengthBudget,
    *,
    reference_model: str,
    sampling_seed: int | None,
) -> tuple[list[dict], BuildReport]:
    """Training rows (plain and aggregation prompts, every one within `budget`) and the build report.

    `candidates[i]` are problem i's scored candidates. Aggregate rows: `aggregate_fraction * P / (1 -
    aggregate_fraction)` sets (at most `sets_per_problem` per problem) chosen per `mix.balance`; plain rows:
    as many problems as keep the requested fraction. Rows come out shuffled (seeded by `mix.seed`).
    """
    if len(candidates) != len(problems):
        raise ValueError(f"got candidates for {len(candidates)} problems, expected {len(problems)}")
    if not problems:
        raise ValueError("no problems to build examples from")
    check_gold_answers(problems)
    if mix.aggregate_fraction > 0:
        for problem, found in zip(problems, candidates):
            try:
                check_k_fits(mix.k, len(found))
            except ValueError as exc:
                raise ValueError(f"problem {problem.id!r}: {exc}") from None
    rng = np.random.default_rng([mix.seed % 2**63, 0xA6])
    tasks: list[Task] = [get_task(p.task) for p in problems]
    n = len(problems)
    f = mix.aggregate_fraction
    report = BuildReport(problems=n, aggregate_fraction_target=f, prompt_limit=budget.prompt_limit)
    report.class_targets = mix.balance.targets() if mix.balance else None

    rows: list[dict] = []
    wanted = n * mix.sets_per_problem if f >= 1 else min(n * mix.sets_per_problem, round(f * n / (1 - f)))
    if f > 0 and wanted == 0:
        message = f"aggregate_fraction {f} of {n} problems rounds to no aggregation prompt; building plain prompts only"
        logger.warning("%s", message)
        report.warnings.append(message)
        f = 0.0
    if f > 0:
        rows = _aggregate_rows(
            problems, tasks, candidates, mix, wanted, budget, rng, report, reference_model, sampling_seed
        )
        if not rows:
            raise ValueError(
                "no aggregation prompt could be built (every candidate set was over the length budget with "
                "--overflow drop?); see the warnings above"
            )
    num_aggregate = len(rows)
    num_plain = n if f == 0 else min(n, round(num_aggregate * (1 - f) / f))
    plain_problems = sorted(int(i) for i in rng.permutation(n)[:num_plain])
    for pi in plain_problems:
        prompt = tasks[pi].plain_prompt(problems[pi])
        tokens = budget.prompt_tokens(prompt)
        if tokens > budget.prompt_limit:  # check_questions guards this before any generation
            raise ContextBudgetError(budget.over_budget_message(problems[pi], "its plain prompt", tokens))
        rows.append(
            {
                **base_row(problems[pi], prompt, "plain", reference_model, sampling_seed),
                "k": 0,
                "candidate_ids": [],
                "candidate_scores": [],
                "majority_correct": None,
                "mean_candidate_accuracy": None,
                "set_class": None,
                "truncated_candidates": 0,
                "prompt_tokens": tokens,
            }
        )
    rows = [rows[int(i)] for i in rng.permutation(len(rows))]

    report.plain = num_plain
    report.aggregate = num_aggregate
    report.aggregate_fraction = num_aggregate / len(rows) if rows else 0.0
    report.classes = {c: sum(1 for r in rows if r["set_class"] == c) for c in CLASSES}
    report.class_fractions = {c: (report.classes[c] / num_aggregate if num_aggregate else 0.0) for c in CLASSES}
    lengths = [r["prompt_tokens"] for r in rows]
    if lengths:
        report.prompt_tokens = {
            "min": float(min(lengths)),
            "median": float(statistics.median(lengths)),
            "max": float(max(lengths)),
        }
    report.histogram = (
        f"prompt tokens (limit {budget.prompt_limit} = max_model_len {budget.max_model_len} - "
        f"max_completion_length {budget.max_completion_length}):\n" + format_histogram(lengths, budget.prompt_limit)
    )
    if report.capped_prompts:
        logger.info("%d candidate(s) in %d prompt(s) capped to fit", report.capped_candidates, report.capped_prompts)
    if report.dropped_over_budget:
        logger.warning("%d candidate set(s) dropped: over the length budget", report.dropped_over_budget)
    return rows, report


def _aggregate_rows(
    problems: Sequence[Problem],
    tasks: Sequence[Task],
    candidates: Sequence[Sequence[Candidate]],
    mix: MixConfig,
    wanted: int,
    budget: LengthBudget,
    rng: np.random.Generator,
    report: BuildReport,
    reference_model: str,
    sampling_seed: int | None,
) -> list[dict]:
    """The aggregation rows: draw each problem's pool of sets, select `wanted` of them, build fitted prompts."""
    s = mix.sets_per_problem
    pool_size = s * POOL_FACTOR if mix.balance else s
    fitter = budget.fitter()
    pools: list[list[CandidateSet]] = []
    drawn: Counter = Counter()
    counts = budget.count_tokens_many([c.text for found in candidates for c in found])
    offsets = np.cumsum([0] + [len(found) for found in candidates]).tolist()
    for pi, (problem, task, found) in enumerate(zip(problems, tasks, candidates)):
        labels = cluster_labels(problem, found)
        drawing = np.random.default_rng([mix.seed % 2**63, 0x5E7, pi])
        sets = draw_aggregation_sets(drawing, len(found), pool_size, mix.k, distinct=True)
        pool = []
        for chosen in sets:
            tokens = fitter.scaffold_tokens(task, problem, len(chosen)) + sum(counts[offsets[pi] + m] for m in chosen)
            if mix.overflow == "drop" and tokens > budget.content_budget:
                report.dropped_over_budget += 1
                continue
            majority = majority_is_correct(chosen, labels, found)
            candidate_set = CandidateSet(pi, chosen, majority, set_class([found[m].correct for m in chosen], majority))
            candidate_set.tokens = tokens
            pool.append(candidate_set)
            drawn[candidate_set.set_class] += 1
        pools.append(pool)
        report.problems_short_of_sets += int(len(pool) < s)
    report.sets_drawn = {c: drawn[c] for c in CLASSES}
    if report.problems_short_of_sets:
        message = (
            f"{report.problems_short_of_sets} problem(s) have fewer than {s} distinct candidate sets of K={mix.k} "
            "(few candidates or many dropped as over budget); they get fewer aggregation prompts"
        )
        logger.warning("%s", message)
        report.warnings.append(message)
    chosen_sets, messages = select_sets(pools, wanted, s, mix.balance, mix.shortfall, rng)
    report.warnings.extend(messages)

    rows = []
    for candidate_set in chosen_sets:
        pi = candidate_set.problem_index
        problem, task, found = problems[pi], tasks[pi], candidates[pi]
        texts = [found[m].text for m in candidate_set.members]
        if mix.overflow == "drop":  # the full prompt, dropped below when its exact length is over the limit
            conversation, truncated = task.aggregation_prompt(problem, texts), 0
            tokens = budget.prompt_tokens(conversation)
        else:  # fitted exactly: the templated prompt is measured, so it is never over the limit
            known = [counts[offsets[pi] + m] for m in candidate_set.members]
            fitted = fitter.fit(task, problem, texts, known.__getitem__)
            conversation, truncated, tokens = fitted.conversation, fitted.truncated, fitted.tokens or 0
        if tokens > budget.prompt_limit:  # drop mode only: the pool's estimate was a few tokens short
            report.dropped_over_budget += 1
            continue
        if truncated:
            report.capped_prompts += 1
            report.capped_candidates += truncated
        scores = [found[m].score for m in candidate_set.members]
        rows.append(
            {
                **base_row(problem, conversation, "aggregate", reference_model, sampling_seed),
                "k": len(candidate_set.members),
                "candidate_ids": [found[m].index for m in candidate_set.members],
                "candidate_scores": scores,
                "majority_correct": candidate_set.majority_correct,
                "mean_candidate_accuracy": float(sum(scores) / len(scores)),
                "set_class": candidate_set.set_class,
                "truncated_candidates": truncated,
                "prompt_tokens": tokens,
            }
        )
    return rows
