"""Co-trained generation and aggregation for GRPO: a group's plain rollouts are its aggregation rollouts' candidates.

With `cotrained_aggregation: F` in a recipe, a share F of the prompt groups of every generation batch is split
in two halves (through TRL's `GRPOTrainer(rollout_func=...)` hook):

1. the first half's rows (n = G - G//2 of the group's G rows) are generated as plain completions;
2. each row of the second half (G//2 rows) gets the task's aggregation prompt (`Task.aggregation_prompt`, the
   code RSA uses) over its own K-subset of the first half's completions, drawn with RSA's seeded subset
   sampler (`rsa.seeds.draw_aggregation_sets`), and is generated in a second call.

No candidate is sampled beyond the group's own G completions, so a step generates as many completions as
standard RL; the extra cost is the aggregation prompts' length and a second generation call.

Rewards (`cotrained_reward` wraps every reward function of the recipe). For rows of a co-trained group:

- plain half: each completion's leave-one-out contribution to the half's coverage,
  `r_i = best_at_k(half) - best_at_k(half without i)`, where `best_at_k` is the unbiased estimate of the
  expected best score of K completions drawn without replacement (`best_at_k`; for 0/1 scores it is the
  unbiased pass@k estimator 1 - C(n-c, K) / C(n, K)). A correct completion earns more the fewer other
  correct ones the half has; a wrong one is charged for diluting the pool;
- aggregation half: the reward function's own value (task correctness, `rsa.rewards`);
- then each half is centred on its own mean, so that every co-trained group has mean 0 and TRL's group
  baseline (one mean per group of G) subtracts nothing: each half is compared only with itself. What TRL's
  `scale_rewards` then does (sum_then_normalize): `group` divides both halves by one number, the standard
  deviation of the group's G half-centred values (Bessel-corrected, over G - 1); `batch` by the generation
  batch's standard deviation; `none` (the toy and smoke recipes) trains on the half-centred values as they
  are. With K < n the contributions of a plain half already sum to zero (the jackknife identity of the
  unbiased estimator), so centring changes only the K = n case.

Rows of other groups keep their reward values (TRL's group baseline applies as in standard RL). Every rank
makes exactly two generation calls per batch, whatever its data (a group that is not co-trained is generated
half in each call), because under ZeRO-3 or vLLM colocate each generation call is a collective; and a group
must not be split across processes (`check_cotrained`), because each process builds the aggregation prompts
from its own plain halves.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rsa.onpolicy import _content, _unit, rollout_output
from rsa.rows import row_to_problem
from rsa.seeds import KRange, draw_aggregation_sets, subset_rng
from rsa.tasks import Problem, get_task

logger = logging.getLogger(__name__)

PLAIN, AGGREGATE = "plain", "aggregate"
#: extra columns the rollout adds to every row: the co-trained group (None for other rows) and its K
GROUP_COLUMN, K_COLUMN = "cotrain_group", "cotrain_k"


# ----- the coverage estimator and the half-relative rewards (pure functions) --------------------------------
def best_at_k(scores: Sequence[float], k: int) -> float:
    """Unbiased estimate, from n scored samples, of the expected best score of k distinct ones (k capped at n).

    Sorted ascending, the j-th score (0-based) is the best of C(j, k-1) of the C(n, k) subsets. For 0/1
    scores with c ones this is pass@k = 1 - C(n-c, k) / C(n, k). An empty pool scores 0.
    """
    n = len(scores)
    if n == 0:
        return 0.0
    k = min(k, n)
    ordered = sorted(scores)
    return sum(math.comb(j, k - 1) * ordered[j] for j in range(k - 1, n)) / math.comb(n, k)


def coverage_contributions(scores: Sequence[float], k: int) -> list[float]:
    """Each sample's leave-one-out contribution: `best_at_k(scores, k) - best_at_k(scores without it, k)`."""
    whole = best_at_k(scores, k)
    return [whole - best_at_k([*scores[:i], *scores[i + 1 :]], k) for i in range(len(scores))]


def _halves(kinds: Sequence, groups: Sequence, ks: Sequence) -> dict[tuple, list[int]]:
    """(group, kind) -> row indices of the co-trained rows; ValueError for a row that cannot be placed."""
    halves: dict[tuple, list[int]] = {}
    for i, group in enumerate(groups):
        if group is None:
            continue
        if kinds[i] not in (PLAIN, AGGREGATE):
            raise ValueError(f"co-trained row {i}: kind {kinds[i]!r}, expected {PLAIN!r} or {AGGREGATE!r}")
        if kinds[i] == PLAIN and not (isinstance(ks[i], int) and ks[i] >= 1):
            raise ValueError(f"co-trained row {i}: {K_COLUMN} {ks[i]!r} is not a candidate count")
        halves.setdefault((group, kinds[i]), []).append(i)
    return halves


def _scored(values: Sequence[float | None], rows: list[int]) -> list[int]:
    return [i for i in rows if values[i] is not None and not math.isnan(values[i])]


def half_relative_rewards(
    values: Sequence[float | None], kinds: Sequence, groups: Sequence, ks: Sequence
) -> list[float | None]:
    """The trained rewards: plain halves as coverage contributions, every co-trained half centred on its mean.

    `values`: one reward function's values (None = not scored, kept); `kinds`, `groups`, `ks`: the rollout's
    `kind`, `cotrain_group` and `cotrain_k` columns. Rows whose group is None are returned unchanged.
    """
    if not len(values) == len(kinds) == len(groups) == len(ks):
        raise ValueError(f"{len(values)} rewards for {len(kinds)} kinds, {len(groups)} groups, {len(ks)} K values")
    out = list(values)
    for (_, kind), rows in _halves(kinds, groups, ks).items():
        scored = _scored(values, rows)
        if not scored:
            continue
        raw = [float(values[i]) for i in scored]
        relative = coverage_contributions(raw, ks[scored[0]]) if kind == PLAIN else raw
        mean = sum(relative) / len(relative)
        for i, value in zip(scored, relative):
            out[i] = value - mean
    return out


def half_metrics(values: Sequence[float | None], kinds: Sequence, groups: Sequence, ks: Sequence) -> dict[str, float]:
    """Raw means over the co-trained rows: `plain_mean`, `plain_best_at_k` (per plain half), `aggregation_mean`."""
    plain, best, aggregate = [], [], []
    for (_, kind), rows in _halves(kinds, groups, ks).items():
        raw = [float(values[i]) for i in _scored(values, rows)]
        if raw and kind == PLAIN:
            plain += raw
            best.append(best_at_k(raw, ks[rows[0]]))
        elif raw:
            aggregate += raw
    named = {"plain_mean": plain, "plain_best_at_k": best, "aggregation_mean": aggregate}
    return {name: sum(xs) / len(xs) for name, xs in named.items() if xs}


def cotrained_reward(func: Callable) -> Callable:
    """`func` (a TRL reward function) returning `half_relative_rewards` of its values; same `__name__`.

    The raw means of `half_metrics` go to TRL's `log_metric` as `cotrain/<name>/<metric>`, because TRL's own
    `rewards/<name>/mean` now averages the half-centred values.
    """

    @functools.wraps(func)
    def reward(*args, **kwargs) -> list[float | None]:
        values = func(*args, **kwargs)
        if GROUP_COLUMN not in kwargs:
            raise ValueError(
                f"co-trained reward {func.__name__}: no {GROUP_COLUMN!r} column; the co-trained rollout "
                "(rsa.cotrain.CoTrainedAggregation as the trainer's rollout_func) adds it"
            )
        columns = (kwargs["kind"], kwargs[GROUP_COLUMN], kwargs[K_COLUMN])
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in half_metrics(values, *columns).items():
                log_metric(f"cotrain/{func.__name__}/{name}", value)
        return half_relative_rewards(values, *columns)

    return reward


# ----- the rollout -------------------------------------------------------------------------------------------
def half_sizes(num_generations: int) -> tuple[int, int]:
    """(plain rows, aggregation rows) of a co-trained group of `num_generations` rows."""
    return num_generations - num_generations // 2, num_generations // 2


def check_cotrained(fraction: float, k: str | int, num_generations: int, process_batch: int) -> KRange:
    """The K range, after checking that co-trained groups can be built; ValueError naming the setting otherwise.

    `process_batch`: completions per process per generation batch (per_device_train_batch_size x
    steps_per_generation).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"cotrained_aggregation must be in (0, 1], got {fraction}")
    k_range = KRange.parse(k, minimum=2, option="cotrained_k")
    plain, aggregate = half_sizes(num_generations)
    if aggregate < 2:
        raise ValueError(
            f"cotrained_aggregation splits each group of num_generations={num_generations} completions into a "
            f"plain half and an aggregation half, each needing >= 2 completions for a relative reward; set "
            f"num_generations to 4 or more"
        )
    if k_range.high > plain:
        raise ValueError(
            f"cotrained_k {k!r}: the aggregation prompts draw K of the plain half's {plain} completions "
            f"(num_generations={num_generations}); lower cotrained_k to at most {plain} or raise num_generations"
        )
    if process_batch % num_generations:
        raise ValueError(
            f"each process generates {process_batch} completions per generation batch (per_device_train_batch_size "
            f"x steps_per_generation), not a multiple of num_generations={num_generations}: a co-trained group "
            f"must not be split across processes, since each process builds the aggregation prompts from its own "
            f"plain half. Set per_device_train_batch_size to a multiple of {num_generations}"
        )
    return k_range


@dataclass
class CoTrainedAggregation:
    """A TRL `rollout_func` whose co-trained groups aggregate their own plain half (see the module docstring).

    `rows`: the training rows (dicts with `prompt`, `task`, `answer`, optional `problem_id`, `kind`, per-task
    fields); only plain rows (kind plain or none) can be co-trained, other rows are generated as they are.
    `fraction`: share of plain groups co-trained; `k`: candidates per aggregation prompt (K or a range, one K
    per group); `process_batch`: completions per process per generation batch, checked by `check_cotrained`.
    """

    rows: Sequence[dict]
    fraction: float = 0.5
    k: str | int = 2
    seed: int = 0
    num_generations: int = 4
    process_batch: int = 4
    totals: dict = field(default_factory=lambda: {"groups": 0, "extra_prompt_tokens": 0, "completion_tokens": 0})

    def __post_init__(self) -> None:
        self.k_range = check_cotrained(self.fraction, self.k, self.num_generations, self.process_batch)
        self._problems: dict[str, Problem] = {}
        for i, row in enumerate(self.rows):
            if row.get("kind") not in (None, PLAIN):
                continue
            question = _content(row["prompt"])
            if question not in self._problems:
                where = f"training row {i + 1}"
                self._problems[question] = row_to_problem(
                    row, where, default_id=str(i), question=question, validate=False
                )
        if not self._problems:
            raise ValueError("co-trained aggregation needs plain-prompt rows (kind plain), e.g. `problems: ...`")

    def _group_starts(self, prompts: list, size: int) -> list[int]:
        if len(prompts) % size:
            raise ValueError(
                f"co-trained rollouts got {len(prompts)} prompts on this process, not a multiple of "
                f"num_generations={size}: set per_device_train_batch_size to a multiple of num_generations"
            )
        starts = list(range(0, len(prompts), size))
        for start in starts:
            if any(_content(prompts[i]) != _content(prompts[start]) for i in range(start, start + size)):
                raise ValueError(
                    f"co-trained rollouts: rows {start}..{start + size - 1} on this process are not one prompt's "
                    f"group of {size}; the generation batch must hold whole prompt groups"
                )
        return starts

    def _aggregation_prompts(self, problem: Problem, candidates: list[str], k: int, step: int) -> list:
        """One aggregation prompt per aggregation row, each over its own seeded K-subset of `candidates`."""
        rows = self.num_generations // 2
        index = int(_unit(self.seed, "subsets", problem.question) * 2**62)
        sets = draw_aggregation_sets(subset_rng(self.seed, step, index), len(candidates), rows, k)
        task = get_task(problem.task)
        return [task.aggregation_prompt(problem, [candidates[j] for j in chosen]) for chosen in sets]

    def _generate(self, trainer, prompts: list) -> tuple[list, list, list | None]:
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        limit = getattr(getattr(trainer.model, "config", None), "max_position_embeddings", None)
        budget = trainer.max_completion_length
        longest = max(len(ids) for ids in prompt_ids)
        if limit and longest + budget > limit:
            raise ValueError(
                f"a co-trained rollout prompt has {longest} tokens, and with max_completion_length {budget} "
                f"exceeds the model's length {limit}; lower cotrained_k or max_completion_length"
            )
        completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, None, {}, 1)
        return prompt_ids, completion_ids, logprobs

    def __call__(self, prompts: list, trainer) -> dict:
        """TRL's rollout hook: ids and logprobs for `prompts`, plus `kind`, `rollout_prompt` and the cotrain columns."""
        n = len(prompts)
        if not trainer.model.training:  # evaluation: plain completions, one call on every rank alike
            prompt_ids, completion_ids, logprobs = self._generate(trainer, list(prompts))
            return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                    "kind": [PLAIN] * n, "rollout_prompt": [_content(p) for p in prompts],
                    GROUP_COLUMN: [None] * n, K_COLUMN: [None] * n}  # fmt: skip
        size = trainer.num_generations
        if size != self.num_generations:
            raise ValueError(f"the trainer's num_generations={size}, the co-trained rollout was built for "
                             f"{self.num_generations}")  # fmt: skip
        starts = self._group_starts(prompts, size)
        step = trainer.state.global_step
        plain_rows, _ = half_sizes(size)
        first = [i for s in starts for i in range(s, s + plain_rows)]
        second = [i for s in starts for i in range(s + plain_rows, s + size)]

        # call 1: the first half of every group, plain prompts
        ids_1, completions_1, logprobs_1 = self._generate(trainer, [prompts[i] for i in first])
        texts = trainer.processing_class.batch_decode(completions_1, skip_special_tokens=True)

        # call 2: the second half; a co-trained group's rows aggregate its first half, other groups stay plain
        final_prompts, kinds = list(prompts), [PLAIN] * n
        groups: list[int | None] = [None] * n
        ks: list[int | None] = [None] * n
        extra_prompt_tokens = 0
        cotrained = []
        for g, start in enumerate(starts):
            question = _content(prompts[start])
            problem = self._problems.get(question)
            if problem is None or _unit(self.seed, step, question) >= self.fraction:
                continue
            k = self.k_range.pick(_unit(self.seed, step, "k", question))
            candidates = texts[g * plain_rows : (g + 1) * plain_rows]
            for i, conversation in zip(range(start + plain_rows, start + size), self._aggregation_prompts(
                    problem, candidates, k, step)):  # fmt: skip
                final_prompts[i], kinds[i] = conversation, AGGREGATE
            for i in range(start, start + size):
                groups[i], ks[i] = g, k
            cotrained.append(g)
        ids_2, completions_2, logprobs_2 = self._generate(trainer, [final_prompts[i] for i in second])

        prompt_ids, completion_ids = [None] * n, [None] * n
        logprobs = None if logprobs_1 is None else [None] * n
        for rows, ids, completions, lps in ((first, ids_1, completions_1, logprobs_1),
                                            (second, ids_2, completions_2, logprobs_2)):  # fmt: skip
            for j, i in enumerate(rows):
                prompt_ids[i], completion_ids[i] = ids[j], completions[j]
                if logprobs is not None:
                    logprobs[i] = lps[j]
        for g in cotrained:  # prefill beyond the plain prompt: the aggregation rows' only extra cost
            plain_length = len(ids_1[g * plain_rows])
            extra_prompt_tokens += sum(len(prompt_ids[i]) - plain_length for i in second if groups[i] == g)

        self.totals["groups"] += len(cotrained)
        self.totals["extra_prompt_tokens"] += extra_prompt_tokens
        self.totals["completion_tokens"] += sum(len(c) for c in completion_ids)
        metrics = trainer._metrics["train"]
        metrics["cotrain/groups"].append(float(len(cotrained)))
        metrics["cotrain/extra_prompt_tokens"].append(float(extra_prompt_tokens))
        return rollout_output(
            prompt_ids, completion_ids, logprobs, kinds, final_prompts, **{GROUP_COLUMN: groups, K_COLUMN: ks}
        )
