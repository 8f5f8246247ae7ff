"""On-policy aggregation rollouts for GRPO: the candidates come from the policy being trained, not a fixed one.

The paper's recipe (offline mode, `rsa augment`) samples the K candidates of every aggregation prompt once,
from the reference policy, before training. In on-policy mode (`on_policy_aggregation: <fraction>` in a
recipe) the rows are plain problems, and for a share of the prompt groups of every generation batch the
trainer, through TRL's `GRPOTrainer(rollout_func=...)` hook:

1. samples K candidates for the problem from the current policy (the same sampler and settings as the
   completions: HF `generate`, or vLLM when `use_vllm` is on);
2. builds the task's aggregation prompt with `Task.aggregation_prompt`, the code RSA's loop uses;
3. samples the group's G completions for that aggregation prompt; they are rewarded by the task scorer and
   trained on like any other completion. The candidates themselves are not trained on, so the number of
   trained completions equals the offline mode's.

All G completions of a group share one candidate set, so the group baseline compares aggregations of the same
candidates. A candidate-level reward (pass@k of the candidate set, as ParaGator uses to train the generator)
is the same for every member of such a group and would add nothing to the GRPO advantage; it is therefore
not a reward here, and is logged instead (`onpolicy/candidates_pass_at_k`, `onpolicy/candidates_accuracy`),
together with the extra generation cost (`onpolicy/candidate_tokens` per batch).

Which groups aggregate is a hash of (seed, step, prompt), so every process decides alike; candidates are
sampled per process (a group split across processes sees different candidates on each).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from rsa.tasks import Problem, get_task

logger = logging.getLogger(__name__)


def parse_k(spec: str | int, option: str = "on_policy_k") -> tuple[int, int]:
    """`"3"` -> (3, 3), `"2-4"` -> (2, 4); ValueError naming `option` and the value otherwise."""
    text = str(spec).strip()
    try:
        low, _, high = text.partition("-")
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ValueError(f"{option} {spec!r}: expected an integer K or a range such as 2-4") from None
    if lo < 2 or hi < lo:
        raise ValueError(f"{option} {spec!r}: K must be >= 2 (and low <= high)")
    return lo, hi


def _unit(*parts) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _content(prompt) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)


@dataclass
class OnPolicyAggregation:
    """A TRL `rollout_func` turning a share of plain prompt groups into on-policy aggregation groups.

    `rows`: the training rows (dicts with `prompt`, `task`, `answer`, optional `problem_id`, `kind`, per-task
    meta); only rows of kind plain (or without kind) become aggregation groups, other rows are generated as
    they are. `fraction`: share of plain groups that aggregate. `k`: candidates per aggregation prompt.
    """

    rows: Sequence[dict]
    fraction: float = 0.5
    k: str | int = 3
    seed: int = 0
    totals: dict = field(default_factory=lambda: {"candidate_tokens": 0, "completion_tokens": 0, "groups": 0})

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"on_policy_aggregation must be in (0, 1], got {self.fraction}")
        self.k_range = parse_k(self.k)
        self._problems: dict[str, Problem] = {}
        for i, row in enumerate(self.rows):
            if row.get("kind") not in (None, "plain"):
                continue
            meta = {key: row[key] for key in ("dataset_name", "entry", "tests", "options") if row.get(key) is not None}
            question = _content(row["prompt"])
            self._problems.setdefault(
                question,
                Problem(
                    id=str(row.get("problem_id") or i),
                    task=row["task"],
                    question=question,
                    answer=row.get("answer"),
                    meta=meta,
                ),
            )
        if not self._problems:
            raise ValueError("on-policy aggregation needs plain-prompt rows (kind plain), e.g. `problems: ...`")

    def _groups(self, prompts: list, size: int) -> list[tuple[int, int]]:
        """(start, end) of consecutive runs of one prompt, cut into chunks of at most `size`."""
        groups, start = [], 0
        for i in range(1, len(prompts) + 1):
            if i == len(prompts) or _content(prompts[i]) != _content(prompts[start]) or i - start == size:
                groups.append((start, i))
                start = i
        return groups

    def __call__(self, prompts: list, trainer) -> dict:
        """TRL's rollout hook: prompt ids, completion ids and logprobs for `prompts`, plus `kind` per row."""
        step = trainer.state.global_step
        groups = self._groups(prompts, trainer.num_generations)
        final_prompts = list(prompts)
        kinds = ["plain"] * len(prompts)
        cand_accuracy: list[float | None] = [None] * len(prompts)
        cand_pass: list[float | None] = [None] * len(prompts)
        plan = []  # (group, problem, k)
        for start, end in groups:
            problem = self._problems.get(_content(prompts[start]))
            if problem is None or _unit(self.seed, step, problem.question) >= self.fraction:
                continue
            lo, hi = self.k_range
            k = lo + int(_unit(self.seed, step, "k", problem.question) * (hi - lo + 1))
            plan.append(((start, end), problem, k))
        candidate_tokens = 0
        if plan:
            cand_prompts = [get_task(p.task).plain_prompt(p) for _, p, k in plan for _ in range(k)]
            cand_ids, _, _ = trainer._tokenize_prompts(cand_prompts)
            cand_completions, _ = trainer._generate_single_turn(cand_ids, None, {}, 1)
            candidate_tokens = sum(len(c) for c in cand_completions)
            texts = trainer.processing_class.batch_decode(cand_completions, skip_special_tokens=True)
            offset = 0
            for (start, end), problem, k in plan:
                task = get_task(problem.task)
                candidates = texts[offset : offset + k]
                offset += k
                scores = [task.score(c, problem) for c in candidates]
                conversation = task.aggregation_prompt(problem, candidates)
                for i in range(start, end):
                    final_prompts[i] = conversation
                    kinds[i] = "aggregate"
                    cand_accuracy[i] = sum(scores) / k
                    cand_pass[i] = float(max(scores) > 0)
        prompt_ids, _, _ = trainer._tokenize_prompts(final_prompts)
        limit = getattr(getattr(trainer.model, "config", None), "max_position_embeddings", None)
        budget = trainer.max_completion_length
        too_long = [len(ids) for ids in prompt_ids if limit and len(ids) + budget > limit]
        if too_long:
            raise ValueError(
                f"an on-policy aggregation prompt has {max(too_long)} tokens, and with max_completion_length "
                f"{budget} exceeds the model's length {limit}; lower on_policy_k or max_completion_length"
            )
        completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, None, {}, 1)
        self.totals["candidate_tokens"] += candidate_tokens
        self.totals["completion_tokens"] += sum(len(c) for c in completion_ids)
        self.totals["groups"] += len(plan)
        mode = "train" if trainer.model.training else "eval"
        metrics = trainer._metrics[mode]
        metrics["onpolicy/candidate_tokens"].append(float(candidate_tokens))
        metrics["onpolicy/aggregation_groups"].append(float(len(plan)))
        agg_rows = [i for i, kind in enumerate(kinds) if kind == "aggregate"]
        if agg_rows:
            metrics["onpolicy/candidates_accuracy"].append(sum(cand_accuracy[i] for i in agg_rows) / len(agg_rows))
            metrics["onpolicy/candidates_pass_at_k"].append(sum(cand_pass[i] for i in agg_rows) / len(agg_rows))
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": completion_ids,
            "logprobs": logprobs,
            "kind": kinds,
            "rollout_prompt": [_content(p) for p in final_prompts],
        }
