"""The completion log (rsa.grpo_setup.CompletionLogger): prompts written once, reward failures stop every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.grpo_setup import CompletionLogger, read_completions

REPO = Path(__file__).resolve().parents[1]


def _score(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_each_prompt_is_written_once_and_read_back_whole(tmp_path):
    log = tmp_path / "completions.jsonl"
    (reward,) = CompletionLogger(log).wrap([_score])
    long_prompt = [{"role": "user", "content": "Q " + "candidate " * 5000}]
    plain = [{"role": "user", "content": "Q2"}]
    for step in range(2):  # the second batch repeats the plain prompt: still written once
        prompts = [long_prompt] * 4 + [plain] * 4 if step == 0 else [plain] * 2
        kinds = ["aggregate"] * 4 + ["plain"] * 4 if step == 0 else ["plain"] * 2
        reward(prompts=prompts, completions=[f"c{i}" for i in range(len(prompts))], kind=kinds)
    raw = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(raw) == 10 and sum("prompt" in row for row in raw) == 2  # one line per distinct prompt carries it
    assert log.stat().st_size < 2 * len(json.dumps(long_prompt))
    rows = read_completions(log)
    assert [row["prompt"] for row in rows] == [long_prompt] * 4 + [plain] * 6
    assert [row["completion"] for row in rows] == [f"c{i}" for i in range(8)] + ["c0", "c1"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(log.read_text().splitlines()[1:]) + "\n")  # the carrying line lost
    with pytest.raises(ValueError, match="prompt_ref .* has no earlier line"):
        read_completions(broken)


@pytest.mark.slow
def test_a_reward_failing_on_one_process_stops_every_process_with_its_error(tiny_model_dir, tmp_path):
    """2 gloo processes; the reward raises on process 1 only. Every process must raise RewardError naming it,
    not wait in the completion log's gather (on GPUs: until ddp_timeout, two hours in the recipe)."""
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train" / "grpo_agg.py"),
               "--config", str(REPO / "configs" / "recipes" / "cpu_smoke.yaml"), "--model_name_or_path",
               tiny_model_dir, "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--reward_funcs", "task",
               "reward_faults.reward_fails_on_process_1", "--reward_weights", "1", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"[rank{rank}]: rsa.grpo_setup.RewardError: reward function failed, stopping every process: process 1: " \
               "reward_fails_on_process_1: ZeroDivisionError: injected reward fault" in result.stderr, \
            result.stderr[-4000:]  # fmt: skip
