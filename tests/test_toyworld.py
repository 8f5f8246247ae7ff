"""Toy world: the toy task, the pre-training traces, and the quick demo through the real pipeline."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.tasks import Problem, get_task
from rsa.tasks.toy import (
    ToySpec,
    check_derivation,
    difficulty_of,
    generate_problems,
    noisy_solution,
    numbers_of,
    solution,
)
from rsa.toyworld import ToyWorldConfig
from rsa.toyworld.evidence import ARM_NAMES
from rsa.toyworld.pipeline import DEFAULT_WORLD, evaluate
from rsa.toyworld.pretrain import PretrainConfig, pretraining_example
from rsa.toyworld.worlds import get_world

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


def test_derivation_checks_catch_every_error_mode():
    numbers = [7, 5, 8, 3]
    assert check_derivation(numbers, solution(numbers)).valid
    slipped = check_derivation(numbers, solution(numbers, {1: 1}))
    assert not slipped.valid and not slipped.arithmetic and slipped.addends and slipped.chain
    wrong_addend = "7+6=13\n13+8=21\n21+3=24\n\\boxed{24}"
    assert (lambda d: d.arithmetic and d.chain and not d.addends)(check_derivation(numbers, wrong_addend))
    broken_chain = "7+5=12\n13+8=21\n21+3=24\n\\boxed{24}"
    assert (lambda d: d.arithmetic and d.addends and not d.chain)(check_derivation(numbers, broken_chain))
    for garbage in ("", "7+5=12", "7+5=12\n\\boxed{x}", "seven\n\\boxed{23}"):
        assert not check_derivation(numbers, garbage).valid
    rng = random.Random(2)
    # each error mode alone makes invalid derivations at about its rate, and the checker sees all of them
    for rates in ((0.3, 0, 0), (0, 0.3, 0), (0, 0, 0.3)):
        samples = [noisy_solution(numbers, rng, *rates) for _ in range(1000)]
        valid = sum(check_derivation(numbers, s).valid for s in samples) / len(samples)
        lines = len(numbers) - 1 if rates[2] == 0 else len(numbers) - 2  # a chain can break from line 2 on
        assert abs(valid - 0.7**lines) < 0.06, (rates, valid)


def test_difficulty_mix():
    specs = [ToySpec.parse(d) for d in ("3x1", "6x1", "4x2")]
    problems = generate_problems(30, seed=5, spec=specs)
    assert [difficulty_of(p.question) for p in problems[:3]] == ["3x1", "6x1", "4x2"]
    assert all(difficulty_of(p.question) == p.meta["difficulty"] for p in problems)
    with pytest.raises(ValueError, match="<terms>x<digits>"):
        ToySpec.parse("four")


def test_aggregation_targets_copy_a_valid_candidate_with_the_given_probability():
    rng = random.Random(1)
    config = PretrainConfig(slip_rate=0.3)
    for i in range(20):
        conversation, target = pretraining_example(rng, config, i, aggregate=True)
        text = conversation[0]["content"]
        assert "Candidates (some may be wrong)" in text and "#2" in text
        candidates = text.split("Candidates (some may be wrong):\n", 1)[1].rsplit("\nWrite the correct solution.", 1)[0]
        assert target in candidates  # always a faithful copy
    numbers = [4, 9, 2, 6]
    problem = Problem(id="p", task="toy", question="Add: 4+9+2+6", answer="21")
    world = get_world("add")
    good, bad = solution(numbers), solution(numbers, {0: 2})
    picks = [world.aggregation_target(problem, [bad, good, bad], rng, config) for _ in range(2000)]
    share = sum(text == good for text in picks) / len(picks)
    assert abs(share - (0.6 + 0.4 / 3)) < 0.04  # checked copy 60%, else a random one of three
    always = PretrainConfig(copy_valid_prob=1.0)
    assert all(world.aggregation_target(problem, [bad, bad], rng, always) == bad for _ in range(20))
    conversation, target = pretraining_example(rng, config, 99, aggregate=False)
    assert conversation[0]["content"].startswith("Add: ") and target.endswith("}")


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a few minutes alone; a shared 2-core machine can take several times longer
def test_a_run_folder_made_with_other_settings_is_refused_before_any_work(tmp_path, capsys):
    from dataclasses import asdict, replace

    from rsa.cli import main as rsa_main
    from rsa.toyworld.pipeline import check_resumable

    out = tmp_path / "demo"
    out.mkdir()
    quick = ToyWorldConfig.quick(DEFAULT_WORLD)
    (out / "toyworld_config.json").write_text(json.dumps(asdict(quick), default=str))
    # the full demo in the quick demo's folder would reuse its 4-step models
    assert rsa_main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "grpo_steps: 4 there, 200 now" in err and "pretrain.steps: 1600 there, 2400 now" in err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in out.iterdir()) == ["toyworld_config.json"]
    # more seeds, more arms or other workers only add runs: resumable
    check_resumable(out, replace(quick, eval_seeds=(1, 2, 3), train_seeds=(0, 1), workers=1))
    with pytest.raises(ValueError, match=r"eval_k: 2 there, 3 now"):
        check_resumable(out, replace(quick, eval_k=3))


def test_quick_demo_runs_every_stage(tmp_path):
    """`rsa demo --quick` (the pick world): pre-training + enforced gate, rsa augment, four GRPO arms, RSA evals,
    report, summary."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=2400)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pre-training the toy base model" in proc.stderr  # the stages log to stderr, the table goes to stdout
    assert "-m rsa.train --config" in proc.stderr and "/rsa/resources/recipes/toy_grpo.yaml" in proc.stderr
    # the quick base's gate, as measured, written and enforced by the demo (pick world: coverage and checking)
    gate = json.loads((out / "models" / "base" / "toy_gate.json").read_text())
    result = gate["result"]
    assert gate["failures"] == [] and result["world"] == DEFAULT_WORLD == "pick"
    assert result["plain"] >= 0.05 and result["pass_at_n"] >= result["plain"] + 0.15  # it solves, and covers more
    assert result["agg"] > result["random_copy"] + 0.1, result  # it aggregates clearly better than a random copy
    assert result["checking"] > 0.5 and result["verdicts_right"] > 0.6  # by checking its candidates
    assert "base gate (in distribution" in proc.stdout  # the gate line is in the printed summary
    assert (out / "data" / "agg" / "train.parquet").is_file()
    assert "train_runtime" not in proc.stdout  # the trainers write to their arm's train.log, not the summary
    expected_kinds = {"standard": {"plain"}, "offline": {"plain", "aggregate"}, "onpolicy": {"plain", "aggregate"},
                      "cotrained": {"plain", "aggregate"}}  # fmt: skip
    for arm, kinds in expected_kinds.items():
        model = out / "models" / f"{arm}-t0"
        assert (model / "model.safetensors").is_file()
        assert "model saved to" in (model / "train.log").read_text()
        from rsa.grpo_setup import read_completions

        logged = read_completions(model / "completions.jsonl")
        assert {row.get("kind") for row in logged} == kinds, arm
        if arm == "onpolicy":  # trained on aggregation prompts built from the policy's own candidates
            agg = [row for row in logged if row["kind"] == "aggregate"]
            assert all("Candidates (some may be wrong)" in row["rollout_prompt"] for row in agg)
            assert sum(row["reward"] for row in agg) > 0  # the aggregation completions earn task reward
        if arm == "cotrained":  # every group: the second half aggregates the first half's completions
            assert all(row["cotrain_group"] is not None for row in logged)
            agg = [row for row in logged if row["kind"] == "aggregate"]
            assert len(agg) * 2 == len(logged) and all(
                "Candidates (some may be wrong)" in row["rollout_prompt"] for row in agg
            )
    # base + RSA on the quick base: populations that solve above zero and that aggregation lifts
    base_steps = [json.loads(s) for s in (out / "eval" / "base-s1234" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in base_steps] == [1, 2, 3]
    assert 0 < base_steps[0]["pass_at_1"] < base_steps[-1]["pass_at_1"], base_steps
    for arm in expected_kinds:
        steps = (out / "eval" / f"{arm}-t0-s1234" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(s)["step"] for s in steps] == [1, 2, 3]
    summary = (out / "summary.md").read_text()
    for text in ("## Pass@1 per RSA step", "## Paired comparisons", "## The paper's claims in this run",
                 "RSA raises a base model's Pass@1", "beats standard RL under RSA", "## Diagnostics",
                 "agg-aware RL (on-policy)", "agg-aware RL (co-trained)", "## Training cost", "extra candidate tokens",
                 "extra prompt tokens per training run", "## Aggregation on fixed candidates",
                 "| agg-aware RL (co-trained) | 1 |", "## Mechanism", "standard RL vs base at step 3"):  # fmt: skip
        assert text in summary, text
    assert (out / "report" / "rsa_steps.png").stat().st_size > 1000
    groups = list(csv.DictReader((out / "report" / "groups.csv").open()))  # one row per arm, seeds pooled
    assert sorted(g["group"] for g in groups) == sorted(ARM_NAMES[arm] for arm in ["base", *expected_kinds]), groups
    assert all(g["pass@1 step T (%) mean"] for g in groups)
    # the evaluations ran in worker processes; the same evaluation in this process gives the same populations
    config = ToyWorldConfig.quick(DEFAULT_WORLD)
    again_dir = evaluate(
        "base", out / "models" / "base", out / "data" / "eval.jsonl", tmp_path / "inline", 1234, config
    )
    for path in sorted((out / "eval" / "base-s1234" / "population").glob("step_*.jsonl")):
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines()]
        assert texts == [
            json.loads(line)["text"] for line in (again_dir / "population" / path.name).read_text().splitlines()
        ]
    # a second run resumes: every stage is found complete
    again = subprocess.run([sys.executable, "-m", "rsa.cli", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pre-training the toy base model" not in again.stderr and "training standard" not in again.stderr
    assert Path(out / "summary.md").read_text() == summary
