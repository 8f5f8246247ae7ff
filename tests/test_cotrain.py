"""Co-trained generation and aggregation (rsa.cotrain): the estimator, the half-relative rewards, the checks, and
real TRL GRPO steps with HF generation and with vLLM colocate rollouts on the tiny model."""

from __future__ import annotations

import json
import math
from itertools import permutations
from pathlib import Path

import pytest
from test_onpolicy import _parse

from rsa.cotrain import (
    CoTrainedAggregation,
    best_at_k,
    check_cotrained,
    coverage_contributions,
    half_relative_rewards,
)
from rsa.grpo_setup import ConfigError, read_completions
from rsa.seeds import KRange

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
COTRAINED = ["--cotrained_aggregation", "1.0", "--cotrained_k", "2", "--num_generations", "4",
             "--per_device_train_batch_size", "8"]  # fmt: skip


def test_best_at_k_is_the_unbiased_pass_at_k_on_binary_scores():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                scores = [1.0] * c + [0.0] * (n - c)
                assert best_at_k(scores, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    # partial scores: the mean over the three pairs of the pair's best, (1 + 0.5 + 1) / 3
    assert best_at_k([0.5, 1.0, 0.0], 2) == pytest.approx(5 / 6)
    assert best_at_k([1.0, 0.0], 5) == 1.0 and best_at_k([], 2) == 0.0  # K capped at the pool; empty pool


def test_coverage_contributions_on_hand_computed_values():
    # pass@2 of [1,0,0,0] = 1 - C(3,2)/C(4,2) = 1/2; without the correct one 0; without a wrong one 1 - 1/3
    assert coverage_contributions([1, 0, 0, 0], 2) == pytest.approx([1 / 2, -1 / 6, -1 / 6, -1 / 6])
    # pass@2 of [1,1,0,0] = 5/6; without a correct one 2/3, without a wrong one 1
    assert coverage_contributions([1, 1, 0, 0], 2) == pytest.approx([1 / 6, 1 / 6, -1 / 6, -1 / 6])
    # K = n: the pool without i has fewer than K members and counts as a whole: only a unique solver earns
    assert coverage_contributions([1, 0], 2) == [1.0, 0.0] and coverage_contributions([1, 1], 2) == [0.0, 0.0]
    assert coverage_contributions([0.5, 1.0, 0.0], 2) == pytest.approx([-1 / 6, 1 / 3, -1 / 6])
    assert coverage_contributions([0, 0, 0], 2) == [0.0, 0.0, 0.0]


def test_half_relative_rewards_centre_each_half_and_leave_other_rows():
    P, A = "plain", "aggregate"
    values = [1, 0, 1, 1, 1, 0, 0, 1, 0, None, 0.3, 0.7]
    kinds = [P, P, A, A, P, P, P, A, A, A, P, P]
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, None, None]
    ks = [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, None, None]
    out = half_relative_rewards(values, kinds, groups, ks)
    # group 0: plain [1, 0] -> contributions [1, 0] -> centred; aggregation [1, 1] -> no signal
    assert out[:4] == pytest.approx([0.5, -0.5, 0.0, 0.0])
    # group 1: plain [1, 0, 0] -> pass@2 2/3 - [0, 1, 1] (already mean 0); aggregation [1, 0, None] -> [.5, -.5]
    assert out[4:9] == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.5, -0.5]) and out[9] is None
    assert out[10:] == [0.3, 0.7]  # not co-trained: TRL's group baseline applies
    assert sum(out[:4]) == pytest.approx(0) and sum(out[4:9]) == pytest.approx(0)  # TRL's group mean is 0
    with pytest.raises(ValueError, match="kind"):
        half_relative_rewards([1.0], ["other"], [0], [2])
    with pytest.raises(ValueError, match="cotrain_k"):
        half_relative_rewards([1.0], [P], [0], [None])


def test_settings_that_cannot_build_co_trained_groups_are_errors(tiny_model_dir, tmp_path):
    assert check_cotrained(0.5, "2-3", 6, 12) == KRange(2, 3)
    for args, message in [
        ((0.0, 2, 4, 4), "cotrained_aggregation must be in"),
        ((0.5, "1", 4, 4), "cotrained_k '1'"),
        ((0.5, 2, 3, 3), "num_generations to 4 or more"),
        ((0.5, "2-3", 4, 4), "at most 2"),
        ((0.5, 2, 4, 6), "must not be split across processes"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_cotrained(*args)
    rows = [{"prompt": [{"role": "user", "content": "Add: 1+2"}], "task": "toy", "answer": "3", "kind": "aggregate"}]
    with pytest.raises(ValueError, match="plain-prompt rows"):
        CoTrainedAggregation(rows)
    # at run time: the process's rows must be whole groups of one prompt each
    rollout = CoTrainedAggregation([{**rows[0], "kind": "plain"}])
    one, two = ([{"role": "user", "content": text}] for text in ("Add: 1+2", "Add: 2+2"))
    assert rollout._group_starts([one] * 4 + [two] * 4, 4) == [0, 4]
    with pytest.raises(ValueError, match="not a multiple of num_generations=4"):
        rollout._group_starts([one] * 6, 4)
    with pytest.raises(ValueError, match="not one prompt's group of 4"):
        rollout._group_starts([one] * 2 + [two] * 6, 4)
    with pytest.raises(ConfigError, match="cotrained_k"):
        _parse(["--config", SMOKE, "--cotrained_aggregation", "0.5", "--cotrained_k", "x"])
    with pytest.raises(ConfigError, match="cotrained_aggregation must be in"):
        _parse(["--config", SMOKE, "--cotrained_aggregation", "1.5"])
    with pytest.raises(ConfigError, match="exclusive"):
        _parse(["--config", SMOKE, "--cotrained_aggregation", "0.5", "--on_policy_aggregation", "0.5"])
    # the batch checks need num_generations: the training entry raises them before any model loads
    from rsa.train import main

    argv = ["--config", SMOKE, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "out",
            *COTRAINED, "--cotrained_k", "3"]  # fmt: skip
    with pytest.raises(ConfigError, match="lower cotrained_k to at most 2"):
        main(*_parse(argv))
    assert not (tmp_path / "out").exists()


def _groups(lines: list[dict], size: int = 4) -> list[list[dict]]:
    """The logged rows cut into prompt groups (the log keeps each batch's row order)."""
    assert len(lines) % size == 0
    return [lines[i : i + size] for i in range(0, len(lines), size)]


def check_aggregation_rows(lines: list[dict]) -> None:
    """Every group: two plain rows, then two aggregation rows whose prompt is the task's aggregation prompt over
    exactly the two plain completions of the same group (in one of their orders)."""
    from rsa.tasks import Problem, get_task

    for group in _groups(lines):
        assert [row["kind"] for row in group] == ["plain", "plain", "aggregate", "aggregate"]
        assert len({row["cotrain_group"] for row in group}) == 1 and {row["cotrain_k"] for row in group} == {2}
        question = group[0]["prompt"][-1]["content"]
        assert all(row["prompt"][-1]["content"] == question for row in group)
        assert [row["rollout_prompt"] for row in group[:2]] == [question, question]
        problem = Problem(id="p", task=group[0]["task"], question=question, answer=None)
        candidates = [row["completion"] for row in group[:2]]
        allowed = {
            get_task(problem.task).aggregation_prompt(problem, list(order))[-1]["content"]
            for order in permutations(candidates)
        }
        for row in group[2:]:
            assert row["rollout_prompt"] in allowed, (row["rollout_prompt"], candidates)


def check_trained_rewards(lines: list[dict]) -> None:
    """The logged (trained) rewards are the half-relative transform of the raw rewards of the logged completions."""
    from rsa.grpo_setup import reward_length_shaping
    from rsa.rewards import reward_task

    for group in _groups(lines):
        completions = [row["completion"] for row in group]
        columns = {c: [row.get(c) for row in group] for c in ("task", "answer", "dataset_name", "entry")}
        raw = {
            "reward_task": reward_task(completions=completions, **columns),
            "reward_length_shaping": reward_length_shaping(completions=completions),
        }
        columns = ([row["kind"] for row in group], [row["cotrain_group"] for row in group], [2] * 4)
        for name, values in raw.items():
            logged = [row["rewards"][name] for row in group]
            assert logged == pytest.approx(half_relative_rewards(values, *columns), abs=1e-6), name
            assert sum(logged[:2]) == pytest.approx(0, abs=1e-6) and sum(logged[2:]) == pytest.approx(0, abs=1e-6)
        assert any(v != 0 for v in raw["reward_length_shaping"])  # the comparison above is not vacuous


@pytest.mark.slow
def test_co_trained_grpo_steps_with_hf_generation(tiny_model_dir, tmp_path):
    """Two real GRPO steps where every group's second half aggregates its first half (HF generation)."""
    from safetensors.torch import load_file

    from rsa.train import main

    out = tmp_path / "out"
    argv = ["--config", SMOKE, "--model_name_or_path", tiny_model_dir, "--output_dir", out, "--max_steps", "2",
            *COTRAINED, "--save_strategy", "no"]  # fmt: skip
    main(*_parse(argv))
    lines = read_completions(out / "completions.jsonl")
    assert len(lines) == 2 * 8 and {x["step"] for x in lines} == {0, 1}
    check_aggregation_rows(lines)
    check_trained_rewards(lines)
    state = json.loads((out / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all(h["cotrain/groups"] == 2 for h in logged)
    assert all(h["cotrain/extra_prompt_tokens"] > 0 for h in logged)  # aggregation prompts are longer
    assert all("cotrain/reward_length_shaping/plain_best_at_k" in h for h in logged)
    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not before[k].equal(after[k]) for k in before), "two co-trained GRPO steps changed no parameter"


@pytest.mark.slow
def test_every_batch_makes_two_generation_calls_even_without_a_co_trained_group(tiny_model_dir, tmp_path):
    """The multi-process rule: the number of generation calls does not depend on which groups are co-trained."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rsa.cotrain import cotrained_reward
    from rsa.grpo_setup import reward_length_shaping

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "task": "math", "answer": str(2 * i)}
            for i in range(8)]  # fmt: skip
    calls = {}
    for fraction in (1e-9, 1.0):  # (almost) no group co-trained, every group co-trained
        args = GRPOConfig(output_dir=str(tmp_path / str(fraction)), use_cpu=True, bf16=False, num_generations=4,
                          per_device_train_batch_size=8, max_completion_length=8, max_steps=1, report_to="none",
                          save_strategy="no", beta=0.0, seed=0)  # fmt: skip
        rollout = CoTrainedAggregation(rows, fraction, 2, 0, 4, 8)
        trainer = GRPOTrainer(model=tiny_model_dir, reward_funcs=[cotrained_reward(reward_length_shaping)],
                              args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=AutoTokenizer.from_pretrained(tiny_model_dir), rollout_func=rollout)  # fmt: skip
        generate, sizes = trainer._generate_single_turn, []

        def counted(prompt_ids, *rest, _generate=generate, _sizes=sizes):  # counts the calls, generates for real
            _sizes.append(len(prompt_ids))
            return _generate(prompt_ids, *rest)

        trainer._generate_single_turn = counted
        trainer.train()
        calls[fraction] = (sizes, rollout.totals["groups"])
    assert calls[1e-9] == ([4, 4], 0) and calls[1.0] == ([4, 4], 2), calls


@pytest.mark.slow
@pytest.mark.vllm
def test_co_trained_grpo_steps_with_vllm_colocate(tiny_model_dir, tmp_path):
    """The same mode with vLLM colocate rollouts: both halves are sampled by the synced colocated engine."""
    pytest.importorskip("vllm")
    from test_vllm_rollouts import _two_colocate_steps

    _, out, state = _two_colocate_steps(tiny_model_dir, tmp_path, *COTRAINED, "--save_strategy", "no")
    lines = read_completions(out / "completions.jsonl")
    assert len(lines) == 2 * 8
    check_aggregation_rows(lines)
    check_trained_rewards(lines)
    logged = [h for h in state["log_history"] if "loss" in h]
    assert all(h["cotrain/groups"] == 2 for h in logged)
    diffs = [h["sampling/sampling_logp_difference/mean"] for h in logged]  # vLLM's logprobs track the trainer's
    assert len(diffs) == 2 and max(diffs) < 0.05, diffs
