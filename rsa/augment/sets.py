"""Candidate sets: AggLM classes (easy / hard / all_wrong) and balanced selection (drawing: `rsa.seeds`)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rsa.augment.candidates import Candidate
from rsa.augment.config import CLASSES, Balance
from rsa.tasks import Problem, get_task

logger = logging.getLogger(__name__)


@dataclass
class CandidateSet:
    """An aggregation set of one problem: candidate indices in prompt order, and its AggLM class."""

    problem_index: int
    members: tuple[int, ...]
    majority_correct: bool
    set_class: str
    tokens: int = 0  # approximate prompt-text tokens with every candidate in full


def set_class(correct: Sequence[bool], majority_correct: bool) -> str:
    """easy (majority right), hard (majority wrong, one or more right) or all_wrong (none right)."""
    if majority_correct:
        return "easy"
    return "hard" if any(correct) else "all_wrong"


def cluster_labels(problem: Problem, candidates: Sequence[Candidate]) -> list[int | None]:
    """Each candidate's answer cluster (`rsa.voting.cluster_answers` over all M), None without an answer."""
    from rsa.voting import cluster_answers

    labels: list[int | None] = [None] * len(candidates)
    for label, cluster in enumerate(
        cluster_answers(get_task(problem.task), [c.extracted for c in candidates], problem)
    ):
        for member in cluster.members:
            labels[member] = label
    return labels


def majority_is_correct(members: Sequence[int], labels: Sequence[int | None], candidates: Sequence[Candidate]) -> bool:
    """Whether the largest answer cluster within `members` is right (ties: the cluster seen first)."""
    counts: Counter = Counter()
    first: dict[int, int] = {}
    for m in members:
        if labels[m] is not None:
            counts[labels[m]] += 1
            first.setdefault(labels[m], m)
    if not counts:
        return False
    best = max(counts, key=lambda label: (counts[label], -members.index(first[label])))
    return candidates[first[best]].correct


def apportion(total: int, targets: Mapping[str, float]) -> dict[str, int]:
    """Split `total` into integer counts proportional to `targets` (largest remainder)."""
    raw = {c: total * w for c, w in targets.items()}
    counts = {c: int(math.floor(v + 1e-9)) for c, v in raw.items()}
    rest = total - sum(counts.values())
    order = sorted((c for c in targets if targets[c] > 0), key=lambda c: (-(raw[c] - counts[c]), CLASSES.index(c)))
    for c in order[:rest]:
        counts[c] += 1
    return counts


def _round_robin(
    pools: Sequence[list[CandidateSet]],
    order: Sequence[int],
    used: list[int],
    taken: set[int],
    limit: int,
    per_problem: int,
    accept: Callable[[CandidateSet], bool],
) -> list[CandidateSet]:
    """Take up to `limit` sets passing `accept`, one per problem per pass (spreads sets over problems)."""
    chosen: list[CandidateSet] = []
    progress = True
    while len(chosen) < limit and progress:
        progress = False
        for p in order:
            if len(chosen) >= limit:
                break
            if used[p] >= per_problem:
                continue
            pick = next((s for s in pools[p] if id(s) not in taken and accept(s)), None)
            if pick is not None:
                taken.add(id(pick))
                used[p] += 1
                chosen.append(pick)
                progress = True
    return chosen


def select_sets(
    pools: Sequence[list[CandidateSet]],
    wanted: int,
    per_problem: int,
    balance: Balance | None,
    shortfall: str,
    rng: np.random.Generator,
) -> tuple[list[CandidateSet], list[str]]:
    """Choose `wanted` sets (at most `per_problem` per problem) meeting the balance targets when given.

    A class with too few sets is reported (the returned messages, also logged as warnings). With
    `shortfall="shrink"` the total shrinks so every class keeps its target fraction; with "fill" other
    classes fill the gap. ValueError when shrinking leaves no set at all.
    """
    order = [int(p) for p in rng.permutation(len(pools))]
    used = [0] * len(pools)
    taken: set[int] = set()
    if balance is None:
        return _round_robin(pools, order, used, taken, wanted, per_problem, lambda s: True), []
    targets = balance.targets()
    want = apportion(wanted, targets)
    available = Counter(s.set_class for pool in pools for s in pool)
    # scarcest class first, so sets that could serve several problems' quotas go where they are needed
    by_scarcity = sorted((c for c in CLASSES if want[c] > 0), key=lambda c: (available[c] / want[c], CLASSES.index(c)))
    chosen: dict[str, list[CandidateSet]] = {c: [] for c in CLASSES}
    for c in by_scarcity:
        chosen[c] = _round_robin(pools, order, used, taken, want[c], per_problem, lambda s, c=c: s.set_class == c)
    messages = []
    short = [c for c in CLASSES if len(chosen[c]) < want[c]]
    for c in short:
        messages.append(
            f"balance: class {c!r} is short: wanted {want[c]} of {wanted} aggregation sets "
            f"({targets[c]:.0%}), found {len(chosen[c])} (distinct {c} sets drawn: {available[c]})"
        )
    if short and shortfall == "shrink":
        total = min(math.floor(len(chosen[c]) / targets[c] + 1e-9) for c in CLASSES if targets[c] > 0)
        while total > 0 and any(n > len(chosen[c]) for c, n in apportion(total, targets).items()):
            total -= 1
        if total == 0:
            raise ValueError(
                "; ".join(messages) + ". Shrinking to keep the target fractions leaves no aggregation set: change "
                "--balance, sample more candidates (--num-candidates), or use --shortfall fill"
            )
        keep = apportion(total, targets)
        messages.append(f"balance: shrinking to {total} aggregation sets to keep the target fractions")
        chosen = {c: chosen[c][: keep[c]] for c in CLASSES}
    elif short:
        gap = wanted - sum(len(v) for v in chosen.values())
        extra = _round_robin(pools, order, used, taken, gap, per_problem, lambda s: True)
        messages.append(
            f"balance: filling {len(extra)} of the {gap} missing sets with other classes (--shortfall fill)"
        )
        for s in extra:
            chosen[s.set_class].append(s)
    for message in messages:
        logger.warning("%s", message)
    return [s for c in CLASSES for s in chosen[c]], messages
