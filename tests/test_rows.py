"""Training rows (`rsa.rows`): one column table, the derived schemas, and problem <-> row conversion,
exercised through the real augment writer, `datasets` and the reward functions."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rsa.augment import LengthBudget, MixConfig, build_examples, score_candidate, write_dataset
from rsa.data import generate_reasoning_gym
from rsa.rewards import reward_task
from rsa.rows import COLUMNS, CORE_COLUMNS, arrow_schema, features, problem_to_row, row_to_problem
from rsa.tasks import Problem

MCQ = Problem("q1", "mcq", "Which is prime?\n\nA. 4\nB. 7\nC. 9", "B", meta={"options": ["4", "7", "9"]})


def test_schemas_come_from_the_one_column_table():
    names = [c.name for c in COLUMNS]
    assert arrow_schema().names == names
    assert list(features()) == list(CORE_COLUMNS)
    assert "options" in CORE_COLUMNS  # read by rewards and training validation, so training keeps it
    assert list(features(names)) == names


def test_problem_row_round_trip_for_every_task_family():
    rg = generate_reasoning_gym(["basic_arithmetic"], 1, seed=2)[0]
    code = Problem(
        "c1", "code", "Print 1.", None, meta={"tests": {"inputs": [""], "outputs": ["1\n"], "fn_name": None}}
    )
    for problem in (rg, MCQ, code, Problem("m1", "math", "1+1?", "2")):
        row = problem_to_row(problem)
        assert set(row) == set(CORE_COLUMNS)
        assert all(v is None or isinstance(v, str) for k, v in row.items() if k != "prompt")  # JSON as text
        back = row_to_problem(row, "row 1", validate=problem.answer is not None)
        assert (back.id, back.task, back.answer) == (problem.id, problem.task, problem.answer)
        assert back.meta == {k: v for k, v in problem.meta.items() if v is not None}


def test_wrong_typed_fields_are_named():
    with pytest.raises(ValueError, match=r"row 3: field 'answer' must be text or a number, got list"):
        row_to_problem({"task": "math", "answer": ["1", "2"]}, "row 3")
    with pytest.raises(ValueError, match=r"row 4: field 'task' is missing or empty"):
        row_to_problem({"answer": "1"}, "row 4")
    with pytest.raises(ValueError, match=r"row 5: field 'entry' holds invalid JSON"):
        row_to_problem({"task": "rg", "answer": "1", "dataset_name": "x", "entry": "{oops"}, "row 5")
    assert row_to_problem({"task": "math", "answer": 12}, "row 6").answer == "12"


def test_augment_writes_options_and_rewards_read_them(tiny_model_dir, tmp_path):
    from datasets import load_dataset

    candidates = [[score_candidate(MCQ, j, f"Thinking. \\boxed{{{letter}}}") for j, letter in enumerate("BCB")]]
    budget = LengthBudget.from_pretrained(tiny_model_dir, 1024, 256)
    mix = MixConfig(max_model_len=1024, max_completion_length=256, aggregate_fraction=0.5, k=2)
    rows, _ = build_examples([MCQ], candidates, mix, budget, reference_model="tiny", sampling_seed=0)
    assert {r["kind"] for r in rows} == {"plain", "aggregate"}
    assert all(json.loads(r["options"]) == ["4", "7", "9"] for r in rows)
    path = write_dataset(rows, tmp_path / "train.parquet")
    assert pq.read_schema(path).names == [c.name for c in COLUMNS]
    data = load_dataset("parquet", data_files=str(path), split="train").select_columns(list(CORE_COLUMNS))
    data = data.cast(features())
    columns = {name: data[name] for name in CORE_COLUMNS if name != "prompt"}
    scores = reward_task(prompts=data["prompt"], completions=["\\boxed{B}", "\\boxed{A}"], **columns)
    assert scores == [1.0, 0.0]
