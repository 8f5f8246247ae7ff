"""Problem loaders: verl parquet, JSONL, Hugging Face datasets (local), Reasoning Gym, and bad rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsa.data import generate_reasoning_gym, load_problems
from rsa.tasks import get_task


def verl_rows():
    rg = generate_reasoning_gym(["leg_counting"], 1, seed=4)[0]
    return [
        {
            "data_source": "aime25",
            "prompt": [{"role": "user", "content": "Find x. Put the answer in \\boxed{}."}],
            "ability": "math",
            "reward_model": {"ground_truth": "17", "style": "rule"},
            "extra_info": {"index": 0},
        },
        {
            "data_source": "reasoning_gym",
            "prompt": [{"role": "user", "content": rg.question}],
            "ability": "reasoning",
            "reward_model": {"ground_truth": rg.answer, "style": "rule"},
            "extra_info": {"index": 1, "dataset_name": "leg_counting", "entry": json.dumps(rg.meta["entry"])},
        },
    ]


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_parquet_layout_loads_and_scores(tmp_path):
    path = write_parquet(tmp_path / "bench.parquet", verl_rows())
    math_p, rg_p = load_problems(str(path))
    assert (math_p.task, math_p.answer, math_p.id) == ("math", "17", "0")
    assert math_p.question.startswith("Find x.")
    assert rg_p.task == "rg" and rg_p.meta["dataset_name"] == "leg_counting"
    assert isinstance(rg_p.meta["entry"], dict)
    assert get_task("rg").score(f"<answer>{rg_p.answer}</answer>", rg_p) == 1.0
    assert get_task("math").score(r"\boxed{17}", math_p) == 1.0


def test_jsonl_flat_layout_gets_the_answer_format_instruction(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": "a", "question": "What is 2+3?", "answer": 5},
        {"id": "b", "task": "mcq", "question": "Capital of France?", "options": ["Rome", "Paris"], "answer": "B"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = load_problems(str(path))
    assert a.answer == "5" and "\\boxed{}" in a.question
    assert "A. Rome" in b.question and "B. Paris" in b.question
    assert load_problems(str(path), limit=1) == [a]


def test_hf_dataset_from_local_path(tmp_path):
    from datasets import Dataset

    Dataset.from_list(verl_rows()).save_to_disk(str(tmp_path / "ds"))
    problems = load_problems(f"hf:{tmp_path / 'ds'}")
    assert [p.task for p in problems] == ["math", "rg"]


def test_reasoning_gym_spec_mixes_tasks_deterministically():
    a = load_problems("rg:basic_arithmetic+leg_counting", size=6, seed=3)
    b = load_problems("rg:basic_arithmetic+leg_counting", size=6, seed=3)
    c = load_problems("rg:basic_arithmetic+leg_counting", size=6, seed=4)
    assert [p.id for p in a] == [p.id for p in b]
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]
    assert {p.meta["dataset_name"] for p in a[:2]} == {"basic_arithmetic", "leg_counting"}
    assert len(load_problems("rg:basic_arithmetic", limit=3)) == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"answer": "1"}, "line 2: no question"),
        ({"question": "q"}, "line 2: field 'answer'"),
        ({"question": "q", "answer": "1", "task": "rg", "dataset_name": "leg_counting"}, "line 2: field 'entry'"),
        ({"question": "q", "answer": "1", "task": "rg", "dataset_name": "nope", "entry": {}}, "line 2: field 'dataset_name'"),
        ({"prompt": [{"role": "system", "content": "x"}], "answer": "1"}, "line 2: field 'prompt'"),
        ({"question": "q", "answer": "1", "task": "chess"}, "unknown task"),
        ({"question": "q", "answer": float("nan")}, r"line 2: field 'answer' is nan \(JSON NaN/Infinity\)"),
        ({"question": "q", "answer": float("inf")}, "line 2: field 'answer' is inf"),
        ({"question": "q", "answer": float("-inf")}, "line 2: field 'answer' is -inf"),
        ({"question": "  \n", "answer": "1"}, "line 2: the question is empty"),
        ({"prompt": [{"role": "user", "content": ""}], "answer": "1"}, "line 2: the question is empty"),
        ({"question": "q", "answer": "1", "id": "ok-1"}, "line 2: duplicate problem id 'ok-1' .first at .*line 1"),
    ],
)  # fmt: skip
def test_malformed_rows_name_file_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "ok", "answer": "1", "id": "ok-1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_problems(str(path))
    assert str(path) in str(info.value)


def test_malformed_parquet_row_is_named(tmp_path):
    rows = verl_rows()
    rows[1]["extra_info"]["entry"] = "{not json"
    path = write_parquet(tmp_path / "b.parquet", rows)
    with pytest.raises(ValueError, match=r"b\.parquet: row 2: field 'entry'"):
        load_problems(str(path))


def test_nan_answers_and_duplicate_ids_in_parquet_and_dataset_rows_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rsa.data import load_rows

    path = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [1.5, float("nan")]}), path)
    with pytest.raises(ValueError, match=r"floats\.parquet: row 2: field 'answer' is nan"):
        load_problems(str(path))
    rows = [{"question": "a", "answer": "1", "id": "p1"}, {"question": "b", "answer": "2", "id": "p1"}]
    with pytest.raises(ValueError, match="hf:x: row 2: duplicate problem id 'p1' .first at hf:x: row 1"):
        load_rows(rows, "hf:x")


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_problems("no-such-benchmark")
    with pytest.raises(ValueError, match="Reasoning Gym"):
        load_problems("rg:not_a_task")
    with pytest.raises(FileNotFoundError):
        load_problems("missing/file.jsonl")
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "q", "answer": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2: invalid JSON"):
        load_problems(str(path))


def test_supergpqa_rows_use_the_answer_letter(tmp_path):
    row = {"uuid": "u1", "question": "Which gas?", "options": ["Neon", "Argon", "Xenon"], "answer": "Argon",
           "answer_letter": "B", "discipline": "Science"}  # fmt: skip
    path = tmp_path / "sgpqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (problem,) = load_problems(str(path), task="mcq")
    assert problem.answer == "B" and "B. Argon" in problem.question


# ----- exact JSONL ---------------------------------------------------------------------------------------------
def test_jsonl_loaders_split_on_newline_only_and_name_bad_lines(tmp_path):
    from rsa.tasks.code import load_livecodebench

    path = tmp_path / "odd.jsonl"
    rows = [{"question": "A\u2028B\u0085C?", "answer": "1", "task": "math"}, {"question": "D?", "answer": "2"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    first, second = load_problems(str(path))
    assert first.question.startswith("A\u2028B\u0085C?") and second.id == "odd-2"

    path.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "\xff", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"odd\.jsonl: line 2: invalid UTF-8"):
        load_problems(str(path))
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q", "answer": ["1"]}\n')
    with pytest.raises(ValueError, match=r"odd\.jsonl: line 2: field 'answer' must be text or a number, got list"):
        load_problems(str(path))

    record = {
        "question_title": "Echo", "question_content": "Print the line\u2028as is.", "platform": "atcoder",
        "question_id": "x1", "contest_id": "c", "contest_date": "2024-08-03T00:00:00", "starter_code": "",
        "difficulty": "easy", "metadata": "{}", "private_test_cases": "",
        "public_test_cases": json.dumps([{"input": "a\n", "output": "a\n", "testtype": "stdin"}]),
    }  # fmt: skip
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    (problem,) = load_livecodebench(lcb, include_private=False)
    assert "line\u2028as is." in problem.question
    lcb.write_bytes(lcb.read_bytes() + b"\xc3\n")
    with pytest.raises(ValueError, match=r"lcb\.jsonl: line 2: invalid UTF-8"):
        load_livecodebench(lcb, include_private=False)


# ----- the built-in hub benchmarks, offline ----------------------------------------------------------------------
# Each hub repository as the Hub lays it out: data/<split>-00000-of-00001.parquet with the repo's columns. A folder
# of that name in the working directory is what `load_hf` reads in place of the Hub, through the same
# `datasets.load_dataset(<repo>, split=<split>)` call, so the split name and the column mapping are tested.
HUB_LAYOUTS = {
    "aime25": ("math-ai/aime25", "test", [
        {"problem": "Find the sum of all integer bases $b>9$ for which $17_b$ divides $97_b$.", "answer": "70",
         "id": "0"},
        {"problem": "How many ordered pairs satisfy the condition?", "answer": "117", "id": "1"},
    ]),
    "hmmt25": ("MathArena/hmmt_feb_2025", "train", [
        {"problem_idx": 1, "problem": "Compute the sum of the positive divisors of 9!.", "answer": "103",
         "problem_type": ["Number Theory"]},
        {"problem_idx": 2, "problem": "Compute $\\sqrt{4}$.", "answer": "2", "problem_type": ["Algebra"]},
    ]),
    "supergpqa": ("m-a-p/SuperGPQA", "train", [
        {"uuid": "5e3f", "question": "Which number is prime?", "options": ["4", "7", "9", "10"], "answer": "7",
         "answer_letter": "B", "discipline": "Science", "field": "Mathematics", "subfield": "Number Theory",
         "difficulty": "easy", "is_calculation": False},
    ]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HUB_LAYOUTS))
def test_builtin_hub_benchmark_reads_its_repository_layout(name, tmp_path, monkeypatch):
    from datasets import Dataset

    from rsa.data import BENCHMARKS, format_question
    from rsa.tasks import get_task

    repo, split, rows = HUB_LAYOUTS[name]
    assert (BENCHMARKS[name].hub, BENCHMARKS[name].split) == (repo, split)
    (tmp_path / repo / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / repo / "data" / f"{split}-00000-of-00001.parquet"))
    monkeypatch.chdir(tmp_path)
    problems = load_problems(name)
    task = get_task(BENCHMARKS[name].task)
    assert [p.task for p in problems] == [task.name] * len(rows)
    for i, (problem, row) in enumerate(zip(problems, rows), 1):
        if name == "supergpqa":  # the letter is the gold answer; the options are listed in the question
            assert problem.answer == row["answer_letter"] and problem.meta["options"] == row["options"]
            assert problem.question == format_question("mcq", row["question"], row["options"])
            assert "B. 7" in problem.question
        else:
            assert problem.answer == row["answer"]
            assert problem.question == format_question("math", row["problem"])
        assert problem.id == row.get("id", f"hf:{repo}-{i}")
        assert task.score(f"so the answer is \\boxed{{{problem.answer}}}", problem) == 1.0
        assert task.score("so the answer is \\boxed{Z0}", problem) == 0.0
