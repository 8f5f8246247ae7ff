"""Per-step metrics of an RSA population, as the paper logs them.

For one step, over P problems each with a population of members (score in [0, 1], extracted answer,
generated token count):

* **Pass@1**: mean member score within each problem, averaged over problems (the expected score of
  a uniformly random member: the paper's headline number).
* **Pass@N**: fraction of problems with at least one member scoring 1.0 (partial credit does not count).
* **Majority**: score of the majority cluster's answer (answers clustered by equivalence through
  `rsa.voting`; ties go to the cluster formed first; a problem with no extracted answer scores 0),
  averaged over problems.
* **Lengths**: generated tokens per member: mean, median and quartiles over all members of all problems.
* **Diversity**: distinct answers per problem, i.e. the number of answer clusters (answers grouped by
  `Task.equivalence_key`, keys the task judges equivalent merged; missing answers not counted),
  averaged over problems; also the fraction of members without an extracted answer.

Cost figures (tokens generated, wall time) come from the loop and are passed through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from rsa.tasks import CORRECT_SCORE, Problem, get_task
from rsa.voting import cluster_answers


class Scored(Protocol):
    """What the metrics read from a population member."""

    extracted: str | None
    score: float
    num_tokens: int


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Mean, median and quartiles of token lengths (zeros for an empty list)."""
    if not len(lengths):
        return {"mean_length": 0.0, "median_length": 0.0, "length_q25": 0.0, "length_q75": 0.0}
    q25, median, q75 = np.percentile(np.asarray(lengths, dtype=float), [25, 50, 75])
    return {
        "mean_length": float(np.mean(lengths)),
        "median_length": float(median),
        "length_q25": float(q25),
        "length_q75": float(q75),
    }


def problem_metrics(problem: Problem, population: Sequence[Scored]) -> dict:
    """One problem's record for one step: pass@1, pass@N, majority answer and score, diversity, lengths."""
    if not population:
        raise ValueError(f"problem {problem.id!r}: empty population")
    task = get_task(problem.task)
    scores = [float(m.score) for m in population]
    answers = [m.extracted for m in population]
    clusters = cluster_answers(task, answers, problem)
    # the largest cluster; max keeps the first formed among equal sizes, as rsa.voting.majority_answer does
    cluster = max(clusters, key=lambda c: len(c.members)) if clusters else None
    return {
        "problem_id": problem.id,
        "pass_at_1": float(np.mean(scores)),
        "pass_at_n": 1.0 if max(scores) >= CORRECT_SCORE else 0.0,
        "majority": scores[cluster.members[0]] if cluster else 0.0,
        "majority_answer": cluster.answer if cluster else None,
        "majority_size": len(cluster.members) if cluster else 0,
        "distinct_answers": len(clusters),
        "missing_answers": sum(a is None for a in answers),
        "population": len(population),
        "mean_length": float(np.mean([m.num_tokens for m in population])),
    }


def step_metrics(
    step: int,
    problems: Sequence[Problem],
    populations: Sequence[Sequence[Scored]],
    *,
    tokens_generated: int | None = None,
    wall_time_s: float | None = None,
) -> tuple[dict, list[dict]]:
    """The step's summary (one `metrics.jsonl` line) and its per-problem records."""
    if len(problems) != len(populations):
        raise ValueError(f"{len(problems)} problems but {len(populations)} populations")
    records = [problem_metrics(p, pop) for p, pop in zip(problems, populations)]
    for record in records:
        record["step"] = step
    lengths = [m.num_tokens for pop in populations for m in pop]
    members = len(lengths)
    summary = {
        "step": step,
        "num_problems": len(problems),
        "pass_at_1": float(np.mean([r["pass_at_1"] for r in records])),
        "pass_at_n": float(np.mean([r["pass_at_n"] for r in records])),
        "majority": float(np.mean([r["majority"] for r in records])),
        **length_stats(lengths),
        "distinct_answers": float(np.mean([r["distinct_answers"] for r in records])),
        "missing_answer_rate": sum(r["missing_answers"] for r in records) / members,
        "population_size": members / len(problems),
    }
    if tokens_generated is not None:
        summary["tokens_generated"] = int(tokens_generated)
    if wall_time_s is not None:
        summary["wall_time_s"] = round(float(wall_time_s), 3)
    return summary, records
