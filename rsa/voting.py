"""Majority voting over a population of answers, clustered by mathematical equivalence.

The naive way (compare every answer with every cluster representative through math-verify, parsing
both strings each time) costs O(N * clusters) parses per problem. Here each answer is first reduced
to its task's `equivalence_key` (for math, its whitespace-normalised text), so identical answers cost
one dictionary lookup; only the distinct keys are then merged pairwise with the task's `same_answer`
(for math, `answers_equivalent`: direct verdicts where math-verify's follows from the values, else
math-verify on cached parses). The resulting clusters are the same as the naive greedy clustering's
(`benchmarks/bench_voting.py` checks this and prints the speed ratio).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from rsa.tasks.base import Problem, Task


@dataclass
class Cluster:
    """Answers judged equivalent: `members` are population indices, `answer` the first member's text."""

    answer: str
    members: list[int]


def cluster_answers(task: Task, answers: Sequence[str | None], problem: Problem) -> list[Cluster]:
    """Greedy equivalence clustering of `answers` in population order; None answers join no cluster.

    Each answer joins the first earlier cluster whose representative is equivalent to it, else opens a
    new cluster, exactly as the naive pairwise method does.
    """
    by_key: dict[Hashable, int] = {}
    clusters: list[Cluster] = []
    same = getattr(task, "same_answer", None)
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        key = task.equivalence_key(answer, problem)
        if key is None:
            continue
        found = by_key.get(key)
        if found is None and same is not None:
            found = next((i for i, c in enumerate(clusters) if same(c.answer, answer)), None)
        if found is None:
            clusters.append(Cluster(answer=answer, members=[]))
            found = len(clusters) - 1
        by_key[key] = found
        clusters[found].members.append(index)
    return clusters


def majority_answer(task: Task, answers: Sequence[str | None], problem: Problem) -> Cluster | None:
    """The largest cluster (ties go to the cluster formed first), or None when no answer exists."""
    clusters = cluster_answers(task, answers, problem)
    if not clusters:
        return None
    return max(clusters, key=lambda c: len(c.members))  # max keeps the first of equal sizes
