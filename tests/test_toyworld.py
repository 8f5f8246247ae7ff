"""Toy world: the toy task, the pre-training traces, and the quick demo through the real pipeline."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.tasks import get_task
from rsa.tasks.toy import generate_problems, noisy_solution, numbers_of, solution
from rsa.toyworld import PretrainConfig, pretraining_example

TOY = get_task("toy")


def test_toy_solution_and_scoring():
    (problem,) = generate_problems(1, seed=3)
    numbers = numbers_of(problem)
    assert sum(numbers) == int(problem.answer)
    right = solution(numbers)
    assert right.count("\n") == len(numbers) - 1  # one line per partial sum, then the box
    assert TOY.score(right, problem) == 1.0
    slipped = solution(numbers, {0: 1})
    assert TOY.score(slipped, problem) == 0.0  # the slip propagates to the total
    assert TOY.extract("no box") is None and TOY.extract(r"\boxed{x}") is None
    assert TOY.equivalence_key("012", problem) == TOY.equivalence_key("12", problem)


def test_noisy_solutions_differ_and_slip_at_the_given_rate():
    (problem,) = generate_problems(1, seed=4)
    rng = random.Random(0)
    samples = [noisy_solution(numbers_of(problem), rng, 0.2) for _ in range(2000)]
    correct = sum(TOY.score(s, problem) for s in samples) / len(samples)
    lines = len(numbers_of(problem)) - 1
    assert abs(correct - 0.8**lines) < 0.05
    assert len({TOY.extract(s) for s in samples}) > 3  # independent samples make different mistakes


def test_aggregation_prompt_targets_copy_one_candidate():
    rng = random.Random(1)
    config = PretrainConfig(slip_rate=0.5)
    for i in range(20):
        conversation, target = pretraining_example(rng, config, i, aggregate=True)
        text = conversation[0]["content"]
        assert "Candidates (some may be wrong)" in text and "#2" in text
        candidates = text.split("Candidates (some may be wrong):\n", 1)[1].rsplit("\nWrite the correct solution.", 1)[0]
        assert target in candidates
    conversation, target = pretraining_example(rng, config, 99, aggregate=False)
    assert conversation[0]["content"].startswith("Add: ") and target.endswith("}")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a few minutes alone; a shared 2-core machine can take several times longer
def test_quick_demo_runs_every_stage(tmp_path):
    """`rsa demo --quick`: pre-training, the augmented dataset, two GRPO arms, RSA evals, report, summary."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=2400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pre-training the toy base model" in proc.stderr  # the stages log to stderr, the table goes to stdout
    assert "-m rsa.train --config" in proc.stderr and "/rsa/resources/recipes/toy_grpo.yaml" in proc.stderr
    assert "| agg | 1234 |" in proc.stdout
    assert json.loads((out / "models" / "base" / "toy_pretrain.json").read_text())["final_loss"] < 3.0
    agg_rows = out / "data" / "agg" / "train.parquet"
    assert agg_rows.is_file()
    for arm in ("standard", "agg"):
        assert (out / "models" / arm / "model.safetensors").is_file()
        logged = [json.loads(line) for line in (out / "models" / arm / "completions.jsonl").read_text().splitlines()]
        kinds = {row.get("kind") for row in logged}
        assert kinds == ({"plain"} if arm == "standard" else {"plain", "aggregate"}), kinds
    summary = (out / "summary.md").read_text()
    for arm in ("base", "standard", "agg"):
        assert f"| {arm} | 1234 |" in summary
        steps = (out / "eval" / f"{arm}-s1234" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(s)["step"] for s in steps] == [1, 2, 3]
    assert (out / "report" / "rsa_steps.png").stat().st_size > 1000
    # a second run resumes: every stage is found complete
    again = subprocess.run([sys.executable, "-m", "rsa.cli", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pre-training the toy base model" not in again.stderr and "training standard" not in again.stderr
    assert Path(out / "summary.md").read_text() == summary
