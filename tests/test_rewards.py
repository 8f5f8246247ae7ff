"""Reward functions called exactly as TRL's GRPOTrainer calls them, and a few real GRPO steps."""

from __future__ import annotations

import json

import pytest

from rsa.data import generate_reasoning_gym
from rsa.rewards import get_reward, make_reward, reward_math, reward_task


def mixed_batch():
    rg = generate_reasoning_gym(["basic_arithmetic"], 1, seed=2)[0]
    prompts = [[{"role": "user", "content": "q"}]] * 4
    completions = [
        [{"role": "assistant", "content": r"so \boxed{\frac{1}{2}}"}],
        [{"role": "assistant", "content": f"<answer>{rg.answer}</answer>"}],
        [{"role": "assistant", "content": r"\boxed{C}"}],
        [{"role": "assistant", "content": "no answer"}],
    ]
    columns = {
        "task": ["math", "rg", "mcq", "math"],
        "answer": ["0.5", rg.answer, "B", "3"],
        "dataset_name": [None, "basic_arithmetic", None, None],
        "entry": [None, json.dumps(rg.meta["entry"]), None, None],
        "trainer_state": None,  # TRL passes extra keywords; they must be ignored
    }
    return prompts, completions, columns


def test_task_reward_routes_each_row_to_its_task():
    prompts, completions, columns = mixed_batch()
    assert reward_task(prompts=prompts, completions=completions, **columns) == [1.0, 1.0, 0.0, 0.0]


def test_single_task_reward_returns_none_for_other_tasks():
    prompts, completions, columns = mixed_batch()
    assert reward_math(prompts=prompts, completions=completions, **columns) == [1.0, None, None, 0.0]
    assert get_reward("rg")(prompts=prompts, completions=completions, **columns) == [None, 1.0, None, None]


def test_reward_names_are_trl_log_keys():
    assert reward_task.__name__ == "reward_task"
    assert reward_math.__name__ == "reward_math"
    assert make_reward(["mcq", "math"]).__name__ == "reward_math_mcq"


def test_reward_accepts_plain_string_completions():
    out = reward_task(
        prompts=["q", "q"], completions=[r"\boxed{4}", r"\boxed{5}"], task=["math"] * 2, answer=["4", "4"]
    )
    assert out == [1.0, 0.0]


def test_reward_errors_are_raised_not_zeroed():
    with pytest.raises(ValueError, match="task"):
        reward_task(prompts=["q"], completions=["x"], answer=["1"])
    with pytest.raises(ValueError, match="3 values for 2"):
        reward_task(prompts=["q", "q"], completions=["a", "b"], task=["math"] * 3, answer=["1", "2"])
    with pytest.raises(ValueError, match="unknown task"):
        reward_task(prompts=["q"], completions=["x"], task=["chess"], answer=["1"])
    with pytest.raises(ValueError, match="entry"):
        reward_task(prompts=["q"], completions=["<answer>1</answer>"], task=["rg"], answer=["1"],
                    dataset_name=["basic_arithmetic"], entry=["{broken"])  # fmt: skip


def test_partial_credit_flag():
    problem = generate_reasoning_gym(["spell_backward"], 1, seed=5)[0]
    kwargs = dict(task=["rg"], answer=[problem.answer], dataset_name=["spell_backward"],
                  entry=[json.dumps(problem.meta["entry"])])  # fmt: skip
    text = [f"<answer>{problem.answer} and more</answer>"]
    partial = make_reward(["rg"])(prompts=["q"], completions=text, **kwargs)[0]
    binary = make_reward(["rg"], partial=False)(prompts=["q"], completions=text, **kwargs)[0]
    assert 0.0 < partial < 1.0
    assert binary == 0.0


@pytest.mark.slow
def test_grpo_trainer_runs_real_steps_with_our_rewards(tiny_model_dir, tmp_path):
    """Two real GRPO steps on the tiny model with a mixed math/RG dataset; rewards reach TRL's logs."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rg = generate_reasoning_gym(["basic_arithmetic"], 2, seed=1)
    rows = [
        {"prompt": [{"role": "user", "content": p.question}], "task": "rg", "answer": p.answer,
         "dataset_name": "basic_arithmetic", "entry": json.dumps(p.meta["entry"])}
        for p in rg
    ] + [
        {"prompt": [{"role": "user", "content": "What is 1+1? Put it in \\boxed{}."}], "task": "math",
         "answer": "2", "dataset_name": None, "entry": None}
        for _ in range(2)
    ]  # fmt: skip
    calls = []

    def reward_probe(prompts, completions, **kwargs):
        calls.append((len(completions), sorted(kwargs)))
        # A random tiny model almost never answers correctly, so all task rewards are 0 and GRPO's
        # advantages vanish; a length term gives the group reward variance so gradients flow.
        scores = reward_task(prompts=prompts, completions=completions, **kwargs)
        return [s + len(c[-1]["content"]) / 100 for s, c in zip(scores, completions)]

    reward_probe.__name__ = "reward_probe"
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=12,
        max_steps=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=tiny_model_dir, reward_funcs=[reward_task, reward_probe], args=args, train_dataset=Dataset.from_list(rows)
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert calls and all(n == 4 for n, _ in calls)
    assert {"task", "answer", "dataset_name", "entry"} <= set(calls[0][1])
    logged = [k for entry in trainer.state.log_history for k in entry]
    assert any("rewards/reward_task" in k for k in logged)
    changed = any(not (before[n] == p.detach()).all() for n, p in trainer.model.named_parameters())
    assert changed, "GRPO steps left every parameter unchanged"
