"""The pick world: its task (questions, grading, check lines), weak solver and aggregator, gate and diagnostics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rsa.tasks import Problem, get_task
from rsa.tasks.pick import (
    PickProblem,
    PickSpec,
    check_record,
    checks_hold,
    difficulty_of,
    generate_problems,
    noisy_answer,
    parse_question,
    weak_aggregation,
)
from rsa.toyworld.diagnostics import GateError, GateThresholds, gate_failures, run_diagnostics, write_gate
from rsa.toyworld.pipeline import ToyWorldConfig, gate_base
from rsa.toyworld.pretrain import PretrainConfig, pretraining_example
from rsa.toyworld.worlds import get_world

PICK = get_task("pick")


def _problem(question: str) -> Problem:
    return Problem(id="q", task="pick", question=question, answer="0 0")


def test_grading_accepts_any_valid_pair_and_respects_multiplicity():
    problem = _problem("Pick two: 3 8 5 9 2 7 =12")
    assert PICK.score(r"\boxed{3 9}", problem) == 1.0
    assert PICK.score(r"\boxed{9 3}", problem) == 1.0  # order does not matter
    assert PICK.score(r"\boxed{5 7}", problem) == 1.0  # another valid pair
    assert PICK.score(r"\boxed{4 8}", problem) == 0.0  # sums to the target, but 4 is not listed
    assert PICK.score(r"\boxed{6 6}", problem) == 0.0
    assert PICK.score(r"\boxed{3 8}", problem) == 0.0
    assert PICK.score(r"\boxed{3 9 0}", problem) == 0.0 and PICK.extract("3 9") is None
    twice = _problem("Pick two: 6 1 6 2 =12")
    assert PICK.score(r"\boxed{6 6}", twice) == 1.0  # 6 is listed twice
    assert PICK.score(r"\boxed{6 6}", _problem("Pick two: 6 1 5 2 =12")) == 0.0
    assert PICK.equivalence_key("9 3", problem) == PICK.equivalence_key("3 9", problem)
    with pytest.raises(ValueError, match="field 'question'"):
        PICK.validate(_problem("Add: 1+2"), "row 3")
    with pytest.raises(ValueError, match="no two listed numbers sum to 30"):
        PICK.validate(_problem("Pick two: 3 8 5 =30"), "row 3")


def test_problems_are_deterministic_solvable_and_labelled():
    problems = generate_problems(200, seed=5, spec=[PickSpec(6), PickSpec(8)])
    assert [p.question for p in problems] == [p.question for p in generate_problems(200, 5, [PickSpec(6), PickSpec(8)])]
    for p in problems:
        parsed = parse_question(p.question)
        assert 1 <= len(parsed.valid_pairs()) <= 2
        assert PICK.score(rf"\boxed{{{p.answer}}}", p) == 1.0
        assert difficulty_of(p.question) == p.meta["difficulty"] == f"p{len(parsed.numbers)}"
    with pytest.raises(ValueError, match="p<size>"):
        PickSpec.parse("six")


def test_weak_solver_is_valid_at_its_rate_and_misses_nearby():
    parsed = PickProblem((3, 8, 5, 9, 2, 7), 12)
    problem = _problem("Pick two: 3 8 5 9 2 7 =12")
    rng = random.Random(0)
    answers = [noisy_answer(parsed, rng, 0.3) for _ in range(3000)]
    assert abs(sum(PICK.score(a, problem) for a in answers) / len(answers) - 0.3) < 0.03
    wrong = [a for a in answers if PICK.score(a, problem) == 0.0]
    assert all(abs(sum(int(x) for x in PICK.extract(a).split()) - 12) <= 2 for a in wrong)


def test_weak_aggregator_checks_each_candidate_and_copies_the_first_marked_ok():
    parsed = PickProblem((3, 8, 5, 9, 2, 7), 12)
    problem = _problem("Pick two: 3 8 5 9 2 7 =12")
    candidates = [r"\boxed{8 5}", r"\boxed{3 9}", r"\boxed{5 7}"]
    exact = weak_aggregation(parsed, candidates, random.Random(0), slip_rate=0.0, check_prob=1.0)
    assert exact == "#1 8+5=13 vs 12 no\n#2 3+9=12 vs 12 ok\n#3 5+7=12 vs 12 ok\n\\boxed{3 9}"
    assert checks_hold(parsed, exact) and get_world("pick").valid(problem, exact)
    record = check_record(parsed, candidates, exact)
    assert (record.checks, record.correct_verdicts, record.complete) == (3, 3, True)
    # a slipped check: the sum is written wrongly, the verdict follows what is written
    slipped = "#1 8+5=12 vs 12 ok\n#2 3+9=12 vs 12 ok\n#3 5+7=12 vs 12 ok\n\\boxed{8 5}"
    assert not checks_hold(parsed, slipped) and not get_world("pick").valid(problem, slipped)
    assert check_record(parsed, candidates, slipped).correct_verdicts == 2
    # with slips, checks still pick a valid candidate far more often than a random copy would (1/3 here)
    rng = random.Random(1)
    outs = [
        weak_aggregation(parsed, [r"\boxed{8 5}", r"\boxed{2 9}", r"\boxed{3 9}"], rng, 0.2, 1.0) for _ in range(2000)
    ]
    assert sum(PICK.score(o, problem) for o in outs) / len(outs) > 0.7
    # without checking (check_prob 0) the aggregator copies a random candidate and writes no check line
    lazy = [
        weak_aggregation(parsed, [r"\boxed{8 5}", r"\boxed{2 9}", r"\boxed{3 9}"], rng, 0.2, 0.0) for _ in range(900)
    ]
    assert not any("#" in o for o in lazy) and abs(sum(PICK.score(o, problem) for o in lazy) / 900 - 1 / 3) < 0.06


def test_aggregation_prompts_show_candidates_by_their_answers_at_every_step():
    problem = _problem("Pick two: 3 8 5 9 2 7 =12")
    step2 = "#1 8+5=13 vs 12 no\n#2 3+9=12 vs 12 ok\n\\boxed{3 9}"  # an aggregation output, a candidate at step 3
    text = PICK.aggregation_prompt(problem, [r"\boxed{8 5}", step2, "no answer"])[0]["content"]
    assert text == "Pick two: 3 8 5 9 2 7 =12\nCandidates (some may be wrong):\n#1 8 5\n#2 3 9\n#3 none\nCheck each."
    conversation, target = pretraining_example(random.Random(2), ToyWorldConfig.full("pick").pretrain, 0, True, "p6", 3)
    assert conversation[0]["content"].endswith("Check each.") and target.endswith("}")


def test_gate_is_enforced_and_names_the_failed_figure(tmp_path):
    result = {"problems": 96, "k": 3, "plain": 0.02, "plain_target": 0.35, "agg": 0.30, "agg_target": 0.7,
              "random_copy": 0.31, "exact_copy": 0.9, "copies_valid_when_possible": 0.5, "pass_at_n": 0.1,
              "coverage_samples": 8, "resolves": 0.0, "verdicts_right": 0.6}  # fmt: skip
    failures = gate_failures(result, GateThresholds())
    assert any("below 0.05" in f for f in failures) and any("does not beat a random copy" in f for f in failures)
    assert any("Pass@8 0.100" in f for f in failures)
    base = tmp_path / "base"
    write_gate(base, result, failures, GateThresholds())
    with pytest.raises(GateError, match="failed its gate") as raised:
        gate_base(base, ToyWorldConfig.quick("pick"))
    assert "does not beat a random copy" in str(raised.value) and str(base) in str(raised.value)
    passing = dict(result, plain=0.3, agg=0.6, pass_at_n=0.7)
    assert gate_failures(passing, GateThresholds()) == []
    write_gate(base, passing, [], GateThresholds())
    assert gate_base(base, ToyWorldConfig.quick("pick")).endswith("-> PASS")


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_diagnostics_of_a_pick_run_count_coverage_resolving_and_verdicts(tmp_path):
    question = "Pick two: 3 8 5 9 2 7 =12"
    _write(tmp_path / "problems.jsonl", [{"id": "a", "task": "pick", "question": question, "answer": "3 9"}])
    step1 = [r"\boxed{3 9}", r"\boxed{5 7}", r"\boxed{8 5}", r"\boxed{7 5}"]
    step2 = [
        "#1 3+9=12 vs 12 ok\n#2 8+5=13 vs 12 no\n\\boxed{3 9}",  # copies a valid parent, both verdicts right
        "#1 8+5=13 vs 12 no\n#2 7+5=12 vs 12 ok\n\\boxed{7 5}",  # copies a valid parent
        "#1 8+5=12 vs 12 ok\n#2 3+9=12 vs 12 ok\n\\boxed{8 5}",  # one wrong verdict, copies an invalid parent
        r"\boxed{2 9}",  # solves anew: none of its parents' answers
    ]
    parents = [[0, 2], [2, 3], [2, 0], [2, 2]]
    _write(tmp_path / "population" / "step_001.jsonl",
           [{"problem_id": "a", "slot": i, "text": t, "parents": []} for i, t in enumerate(step1)])  # fmt: skip
    _write(tmp_path / "population" / "step_002.jsonl",
           [{"problem_id": "a", "slot": i, "text": t, "parents": p} for i, (t, p) in enumerate(zip(step2, parents))])  # fmt: skip
    first, second = run_diagnostics(tmp_path)
    assert first["distinct_correct"] == 2  # {3, 9} and {5, 7}
    assert first["valid"] == 0.75 and "resolves" not in first
    assert second["resolves"] == 0.25 and second["exact_copy"] == 0.75
    assert second["verdicts_right"] == 5 / 8  # right verdicts per candidate shown (the fourth checks neither)
    assert second["copies_valid_when_possible"] == 2 / 3  # three had a valid parent; two of them copy one
    assert second["valid"] == 0.5


def test_pretraining_config_rejects_an_unknown_world():
    with pytest.raises(ValueError, match="unknown toy world 'chess'; known worlds: add, pick"):
        PretrainConfig(world="chess")
