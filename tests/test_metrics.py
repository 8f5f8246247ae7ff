"""Metric arithmetic on hand-made populations: Pass@1, Pass@N, majority vote, diversity, lengths."""

from __future__ import annotations

import math

import pytest

from rsa.loop import Member
from rsa.metrics import length_stats, problem_metrics, step_metrics
from rsa.tasks import Problem


def member(extracted, score, num_tokens=10):
    return Member(text=f"... {extracted}", num_tokens=num_tokens, extracted=extracted, score=score)


MATH_2 = Problem(id="p-two", task="math", question="1+1?", answer="2")
MATH_5 = Problem(id="p-five", task="math", question="2+3?", answer="5")
MATH_7 = Problem(id="p-seven", task="math", question="3+4?", answer="7")


def test_problem_metrics_by_hand():
    # "2" and "2.0" are one cluster (exact rationals); one member has no answer
    population = [member("2", 1.0, 4), member("2.0", 1.0, 8), member("3", 0.0, 12), member(None, 0.0, 16)]
    record = problem_metrics(MATH_2, population)
    assert record["pass_at_1"] == 0.5
    assert record["pass_at_n"] == 1.0
    assert record["majority"] == 1.0
    assert record["majority_answer"] == "2"
    assert record["majority_size"] == 2
    assert record["distinct_answers"] == 2
    assert record["missing_answers"] == 1
    assert record["mean_length"] == 10.0


def test_majority_wrong_while_one_member_right():
    population = [member("4", 0.0), member("4", 0.0), member("5", 1.0), member("4", 0.0)]
    record = problem_metrics(MATH_5, population)
    assert record["pass_at_1"] == 0.25
    assert record["pass_at_n"] == 1.0
    assert record["majority"] == 0.0
    assert record["majority_answer"] == "4"


def test_majority_tie_goes_to_first_cluster():
    assert problem_metrics(MATH_5, [member("3", 0.0), member("5", 1.0)])["majority"] == 0.0
    assert problem_metrics(MATH_5, [member("5", 1.0), member("3", 0.0)])["majority"] == 1.0


def test_majority_merges_mathematically_equal_answers():
    # \frac{1}{2} and 0.5 share an exact-rational key; \sqrt{4} is merged with 2 through math-verify
    problem = Problem(id="half", task="math", question="?", answer="2")
    population = [member("\\sqrt{4}", 1.0), member("3", 0.0), member("2", 1.0), member("3", 0.0), member("2", 1.0)]
    record = problem_metrics(problem, population)
    assert record["majority_size"] == 3
    assert record["majority"] == 1.0
    assert record["distinct_answers"] == 2


def test_no_answers_at_all():
    record = problem_metrics(MATH_7, [member(None, 0.0), member(None, 0.0)])
    assert record == record | {"pass_at_1": 0.0, "pass_at_n": 0.0, "majority": 0.0, "majority_answer": None}
    assert record["distinct_answers"] == 0
    assert record["missing_answers"] == 2


def test_partial_credit_counts_for_pass_at_1_not_pass_at_n():
    problem = Problem(
        id="rg", task="rg", question="?", answer="x", meta={"dataset_name": "basic_arithmetic", "entry": {}}
    )
    record = problem_metrics(problem, [member("a", 0.5), member("b", 0.25)])
    assert record["pass_at_1"] == pytest.approx(0.375)
    assert record["pass_at_n"] == 0.0
    assert record["majority"] == 0.5  # tie: first cluster "a"


def test_step_metrics_average_over_problems():
    populations = [
        [member("2", 1.0, 4), member("2.0", 1.0, 8), member("3", 0.0, 12), member(None, 0.0, 16)],
        [member("4", 0.0, 1), member("4", 0.0, 2), member("5", 1.0, 3), member("4", 0.0, 4)],
        [member(None, 0.0, 100), member(None, 0.0, 100), member(None, 0.0, 100), member(None, 0.0, 100)],
    ]
    summary, records = step_metrics(3, [MATH_2, MATH_5, MATH_7], populations, tokens_generated=99, wall_time_s=1.5)
    assert summary["step"] == 3 and all(r["step"] == 3 for r in records)
    assert summary["pass_at_1"] == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert summary["pass_at_n"] == pytest.approx(2 / 3)
    assert summary["majority"] == pytest.approx(1 / 3)
    assert summary["distinct_answers"] == pytest.approx((2 + 2 + 0) / 3)
    assert summary["missing_answer_rate"] == pytest.approx(5 / 12)
    lengths = [4, 8, 12, 16, 1, 2, 3, 4, 100, 100, 100, 100]
    assert summary["mean_length"] == pytest.approx(sum(lengths) / 12)
    assert summary["median_length"] == pytest.approx(10.0)  # between 8 and 12
    assert summary["tokens_generated"] == 99 and summary["wall_time_s"] == 1.5
    assert summary["population_size"] == 4
    assert [r["problem_id"] for r in records] == ["p-two", "p-five", "p-seven"]


def test_length_stats_quartiles():
    stats = length_stats([1, 2, 3, 4, 5])
    assert stats == {"mean_length": 3.0, "median_length": 3.0, "length_q25": 2.0, "length_q75": 4.0}
    assert all(v == 0.0 for v in length_stats([]).values())
    assert math.isclose(length_stats([7])["length_q75"], 7.0)


def test_step_metrics_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="2 problems but 1 populations"):
        step_metrics(1, [MATH_2, MATH_5], [[member("2", 1.0)]])
    with pytest.raises(ValueError, match="empty population"):
        problem_metrics(MATH_2, [])
