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

Several processes: every process makes the same generation calls with the same number of candidate requests
(`equal_requests`: the largest count is all-gathered, the others pad with a short request whose completion is
dropped), also a process with no aggregation group. TRL needs it: its server-mode `generate` gathers all
processes' prompts and hands process i the slice from i x (its own count), and under ZeRO-3 each generation
call holds collectives. `one_weight_load` makes both calls of a rollout load the trained weights once.
Aggregation prompts are fitted to the engine's real length (`engine_max_length`) as RSA's loop fits them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from rsa.fitting import ContextBudgetError, PromptFitter
from rsa.seeds import KRange
from rsa.tasks import Problem, get_task

logger = logging.getLogger(__name__)


def _unit(*parts) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def rollout_output(prompt_ids, completion_ids, logprobs, kinds: list[str], prompts: list, **columns) -> dict:
    """What a TRL 1.16 `rollout_func` returns: token ids and logprobs, plus the extra per-row columns that reach
    the reward functions and the completion log (`kind`, the `rollout_prompt` text, and any `columns`)."""
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "logprobs": logprobs,
        "kind": kinds,
        "rollout_prompt": [_content(p) for p in prompts],
        **columns,
    }


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
        self.k_range = KRange.parse(self.k, minimum=2, option="on_policy_k")
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

    def _plan(self, prompts: list, step: int, size: int) -> list[tuple[tuple[int, int], Problem, int]]:
        """(group, problem, K) for each group of `prompts` that aggregates at `step`."""
        plan = []
        for start, end in self._groups(prompts, size):
            problem = self._problems.get(_content(prompts[start]))
            if problem is None or _unit(self.seed, step, problem.question) >= self.fraction:
                continue
            k = self.k_range.pick(_unit(self.seed, step, "k", problem.question))
            plan.append(((start, end), problem, k))
        return plan

    def __call__(self, prompts: list, trainer) -> dict:
        """TRL's rollout hook: prompt ids, completion ids and logprobs for `prompts`, plus `kind` per row.

        Every process makes the same generation calls with the same number of requests, whatever its own
        groups decide (see `equal_requests`), so the collectives inside them pair up across processes.
        """
        step = trainer.state.global_step
        plan = self._plan(prompts, step, trainer.num_generations)
        final_prompts = list(prompts)
        kinds = ["plain"] * len(prompts)
        cand_accuracy: list[float | None] = [None] * len(prompts)
        cand_pass: list[float | None] = [None] * len(prompts)
        cand_prompts = [get_task(p.task).plain_prompt(p) for _, p, k in plan for _ in range(k)]
        requests = equal_requests(len(cand_prompts), trainer.accelerator)
        candidate_tokens = truncated = overflow = 0
        with one_weight_load(trainer, active=requests > 0):
            if requests:
                padded = cand_prompts + [PAD_PROMPT] * (requests - len(cand_prompts))
                cand_ids, _, _ = trainer._tokenize_prompts(padded)
                cand_completions, _ = trainer._generate_single_turn(cand_ids, None, {}, 1)
                cand_completions = cand_completions[: len(cand_prompts)]  # the padding's completions are dropped
                candidate_tokens = sum(len(c) for c in cand_completions)
                texts = trainer.processing_class.batch_decode(cand_completions, skip_special_tokens=True)
                fitter = _fitter(trainer)
                offset = 0
                for (start, end), problem, k in plan:
                    task = get_task(problem.task)
                    candidates = texts[offset : offset + k]
                    offset += k
                    try:
                        fitted = fitter.fit(task, problem, candidates)
                    except ContextBudgetError as exc:  # raising here alone would leave the other processes waiting
                        logger.warning("on-policy group stays plain: %s", exc)
                        overflow += 1
                        continue
                    scores = [task.score(c, problem) for c in candidates]
                    truncated += fitted.truncated
                    for i in range(start, end):
                        final_prompts[i] = fitted.conversation
                        kinds[i] = "aggregate"
                        cand_accuracy[i] = sum(scores) / k
                        cand_pass[i] = float(max(scores) > 0)
            prompt_ids, _, _ = trainer._tokenize_prompts(final_prompts)
            completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, None, {}, 1)
        self.totals["candidate_tokens"] += candidate_tokens
        self.totals["completion_tokens"] += sum(len(c) for c in completion_ids)
        self.totals["groups"] += len(plan) - overflow
        mode = "train" if trainer.model.training else "eval"
        metrics = trainer._metrics[mode]
        metrics["onpolicy/candidate_tokens"].append(float(candidate_tokens))
        metrics["onpolicy/aggregation_groups"].append(float(len(plan) - overflow))
        metrics["onpolicy/padding_requests"].append(float(requests - len(cand_prompts)))
        metrics["onpolicy/truncated_candidates"].append(float(truncated))
        agg_rows = [i for i, kind in enumerate(kinds) if kind == "aggregate"]
        if agg_rows:
            metrics["onpolicy/candidates_accuracy"].append(sum(cand_accuracy[i] for i in agg_rows) / len(agg_rows))
            metrics["onpolicy/candidates_pass_at_k"].append(sum(cand_pass[i] for i in agg_rows) / len(agg_rows))
        return rollout_output(prompt_ids, completion_ids, logprobs, kinds, final_prompts)


#: the request that pads a process's candidate generation up to the common count (its completion is dropped)
PAD_PROMPT = [{"role": "user", "content": "Say OK."}]


def equal_requests(local: int, accelerator) -> int:
    """The number of candidate requests every process makes this step: the largest local count of all processes.

    One small all-gather that every process joins. Equal counts are what TRL needs: in server mode its
    `generate` gathers all processes' prompts and hands process i the slice starting at i x (its own count),
    so unequal counts would hand a process other processes' candidates; with ZeRO-3 (HF generation or a
    weight sync into vLLM) every generation call holds collectives that all processes must join, so a
    process without aggregation groups must still make the call (with padding requests only). 0 when no
    process aggregates: then no process makes the call.
    """
    if accelerator.num_processes == 1:
        return local
    import torch

    counts = accelerator.gather(torch.tensor([local], device=accelerator.device))
    return int(counts.max().item())


def engine_max_length(trainer) -> int | None:
    """The longest sequence (prompt + completion) the generation engine takes.

    vLLM's `max_model_len` when vLLM generates (`vllm_max_model_length`, else the model's own length, which
    vLLM defaults to), the model config's `max_position_embeddings` for HF generation; None when unknown.
    """
    config = getattr(getattr(trainer, "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    model_limit = getattr(config, "max_position_embeddings", None)
    engine_limit = getattr(trainer.args, "vllm_max_model_length", None) if trainer.use_vllm else None
    if engine_limit and model_limit:
        return min(engine_limit, model_limit)
    return engine_limit or model_limit


def _fitter(trainer) -> PromptFitter:
    """Fits an aggregation prompt, chat template included, into the engine's length less max_completion_length.

    Candidates that overflow are shortened around the truncation marker (as RSA evaluation does), never
    dropped. When even the truncation markers cannot fit, `fit` raises ContextBudgetError and the group stays
    plain (logged), on that process only, so that no process raises while the others wait in a collective.
    """
    tokenizer = trainer.processing_class
    kwargs = getattr(trainer, "chat_template_kwargs", None) or {}
    limit = engine_max_length(trainer)
    budget = (limit - trainer.max_completion_length) if limit else 2**62

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def measure(conversation) -> int:
        encoded = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=True, **kwargs)
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return len(ids)

    def explain(problem: Problem, what: str, tokens: int) -> str:
        return (
            f"problem {problem.id!r}: {what} has {tokens} tokens; with max_completion_length "
            f"{trainer.max_completion_length} that exceeds the engine's length {limit}; lower on_policy_k or "
            "max_completion_length, or raise vllm_max_model_length"
        )

    overhead = measure([{"role": "user", "content": ""}])
    return PromptFitter(count, budget, measure=measure, overhead=overhead, explain=explain)


@contextlib.contextmanager
def one_weight_load(trainer, active: bool = True):
    """Within this block, the generation calls of a rollout load the trained weights once, not once per call.

    - vLLM colocated with sleep mode: TRL's `generate` puts the engine to sleep (level 2, weights discarded)
      after every call, so the next call would push all weights again (a second ZeRO-3 gather). Here the
      weights are synced if asleep, the KV cache is woken once, sleep is held off for the block's calls,
      and the engine sleeps once at the end.
    - HF generation under ZeRO-3: every `_generate_single_turn` gathers the full parameters. Here they are
      gathered once for the block (TRL's own `unwrap_model_for_generation`), and TRL's per-call gather is
      switched off meanwhile.
    - Otherwise (vLLM without sleep mode, vLLM server, no ZeRO-3) TRL already syncs once per step: nothing.
    Every process must enter the block alike (it is entered with the same `active` on every process).
    """
    if not active:
        yield
        return
    generation = getattr(trainer, "vllm_generation", None)
    if trainer.use_vllm:
        if generation is None or generation.mode != "colocate" or not generation.enable_sleep_mode:
            yield
            return
        if generation._llm_weights_sleeping:
            generation.sync_weights()
        generation.llm.wake_up(tags=["kv_cache"])
        generation.enable_sleep_mode = False
        try:
            yield
        finally:
            generation.enable_sleep_mode = True
            generation.llm.sleep(level=2)
            generation._llm_weights_sleeping = True
        return
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    zero3 = plugin is not None and getattr(plugin, "zero_stage", None) == 3
    if not zero3 or not trainer.args.ds3_gather_for_generation or trainer.use_transformers_continuous_batching:
        yield
        return
    from trl.models import unwrap_model_for_generation

    with unwrap_model_for_generation(
        trainer.model_wrapped,
        trainer.accelerator,
        gather_deepspeed3_params=True,
        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
    ):
        trainer.args.ds3_gather_for_generation = False
        try:
            yield
        finally:
            trainer.args.ds3_gather_for_generation = True
