"""On-policy aggregation rollouts (rsa.onpolicy) through the real TRL GRPOTrainer and train/grpo_agg.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rsa.onpolicy import OnPolicyAggregation, parse_k
from rsa.training import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
SCRIPT = REPO / "train" / "grpo_agg.py"


def _parse(argv):
    from trl import ModelConfig, TrlParser

    from rsa.training import GRPOAggConfig, GRPOAggScriptArguments

    return TrlParser((GRPOAggScriptArguments, GRPOAggConfig, ModelConfig)).parse_args_and_config([str(a) for a in argv])


def test_k_and_fraction_are_checked():
    assert parse_k("3") == (3, 3) and parse_k("2-4") == (2, 4)
    for bad in ("1", "x", "4-2"):
        with pytest.raises(ValueError, match="on_policy_k"):
            parse_k(bad)
    rows = [{"prompt": [{"role": "user", "content": "Add: 1+2"}], "task": "toy", "answer": "3", "kind": "plain"}]
    with pytest.raises(ValueError, match="on_policy_aggregation"):
        OnPolicyAggregation(rows, fraction=0.0)
    with pytest.raises(ValueError, match="plain-prompt rows"):
        OnPolicyAggregation([{**rows[0], "kind": "aggregate"}], fraction=0.5)
    with pytest.raises(ConfigError, match="on_policy_k"):
        _parse(["--config", SMOKE, "--on_policy_aggregation", "0.5", "--on_policy_k", "1"])
    with pytest.raises(ConfigError, match="on_policy_aggregation"):
        _parse(["--config", SMOKE, "--on_policy_aggregation", "1.5"])


@pytest.mark.slow
def test_on_policy_rollouts_train_on_aggregation_prompts_of_the_current_policy(tiny_model_dir, tmp_path):
    """Two real GRPO steps where every group aggregates K=2 candidates sampled from the policy being trained."""
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("grpo_agg", SCRIPT)
    grpo_agg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grpo_agg)
    out = tmp_path / "out"
    argv = ["--config", SMOKE, "--model_name_or_path", tiny_model_dir, "--output_dir", out, "--max_steps", "2",
            "--on_policy_aggregation", "1.0", "--on_policy_k", "2", "--save_strategy", "no"]  # fmt: skip
    grpo_agg.main(*_parse(argv))
    lines = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 4 and {x["kind"] for x in lines} == {"aggregate"}
    for line in lines:
        plain = line["prompt"][-1]["content"]
        trained_on = line["rollout_prompt"]
        # the task's aggregation prompt (rg wording) around the plain question, with two candidates
        assert trained_on != plain and plain.strip() in trained_on
        assert "Candidate solution 1" in trained_on and "Candidate solution 2" in trained_on
        assert "Candidate solution 3" not in trained_on
        assert set(line["rewards"]) == {"reward_task", "reward_length_shaping"}
    # the G completions of a group share one candidate set; different groups have different ones
    groups = [lines[i]["rollout_prompt"] for i in range(0, len(lines), 2)]
    assert all(lines[i]["rollout_prompt"] == lines[i + 1]["rollout_prompt"] for i in range(0, len(lines), 2))
    assert len(set(groups)) == len(groups)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    logged = [h for h in state["log_history"] if "onpolicy/candidate_tokens" in h]
    assert logged and all(h["onpolicy/candidate_tokens"] > 0 for h in logged)
    before, after = (
        load_file(str(Path(tiny_model_dir) / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert any(not before[k].equal(after[k]) for k in before), "two on-policy GRPO steps changed no parameter"
