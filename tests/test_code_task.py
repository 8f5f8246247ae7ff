"""Code task: extraction, prompts, validation, scoring real programs in the sandbox, and the LiveCodeBench loader."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import zlib

import pytest

from rsa.sandbox import Limits, Sandbox
from rsa.tasks import Problem, get_task
from rsa.tasks.code import (
    STDIN_INSTRUCTION,
    CodeTask,
    decode_test_cases,
    extract_code,
    load_livecodebench,
    problem_from_livecodebench,
)


@pytest.fixture(scope="module")
def task():
    # generous per-test limit: every program here finishes in milliseconds, but CI machines can be loaded
    with Sandbox(Limits(timeout_s=5.0, memory_mb=512, startup_s=20), max_workers=2) as sandbox:
        yield CodeTask(sandbox=sandbox)


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my reasoning.\n\n```{lang}\n{code}\n```\n"


SUM_TESTS = {"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7\n", "7\n"], "fn_name": None}
SUM_PROBLEM = Problem(
    id="sum", task="code", question="Read a and b, print a+b.", answer=None, meta={"tests": SUM_TESTS}
)
STARTER = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        "
TWO_SUM_TESTS = {
    "inputs": ["[2, 7, 11, 15]\n9", "[3, 2, 4]\n6", "[3, 3]\n6"],
    "outputs": ["[0, 1]", "[1, 2]", "[0, 1]"],
    "fn_name": "twoSum",
}
TWO_SUM = Problem(
    id="two-sum",
    task="code",
    question="Return indices of the two numbers adding up to target.",
    answer=None,
    meta={"tests": TWO_SUM_TESTS, "starter_code": STARTER},
)
TWO_SUM_CORRECT = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""
# right on the first two tests, wrong when the pair is two equal numbers
TWO_SUM_PARTIAL = """
class Solution:
    def twoSum(self, nums, target):
        for i, x in enumerate(nums):
            if target - x in nums and nums.index(target - x) != i:
                return [i, nums.index(target - x)]
        return []
"""


# ----- extraction ----------------------------------------------------------------------------------------------------
def test_extracts_the_last_python_block():
    text = "```python\nprint(1)\n```\nthinking...\n```py\nprint(2)\n```\nand a shell line\n```bash\nls\n```\n"
    assert extract_code(text) == "print(2)"
    assert extract_code("```\nprint(3)\n```") == "print(3)"  # untagged blocks count
    # CRLF text: the tag matches case-insensitively and the body is kept verbatim up to its last line break (Python
    # reads \r\n line ends, so the program runs as written)
    assert extract_code("```Python3\r\nprint(4)\r\n```") == "print(4)\r"
    assert extract_code("```Python3\r\nx = 4\r\nprint(x)\r\n```") == "x = 4\r\nprint(x)\r"
    assert extract_code("no code at all") is None
    assert extract_code("```python\nprint(5)\n") is None  # unclosed (truncated) block
    assert extract_code("```cpp\nint main(){}\n```") is None
    assert extract_code("```python\n\n```") is None
    assert extract_code("```python\nprint(1)\n```\n```python\nprint(6)\n") == "print(1)"  # last CLOSED block


# ----- prompts -------------------------------------------------------------------------------------------------------
def test_plain_prompts_follow_livecodebench_formats():
    stdin = problem_from_livecodebench(_stdin_record())
    functional = problem_from_livecodebench(_functional_record())
    text = get_task("code").plain_prompt(stdin)[0]["content"]
    assert "### Question:" in text and "Sum two integers" in text
    assert "standard input" in text and "```python\n# YOUR CODE HERE\n```" in text
    text = get_task("code").plain_prompt(functional)[0]["content"]
    assert "starter code" in text and "def twoSum(self" in text
    assert text.rstrip().endswith("### Answer: (use the provided format with backticks)")


def test_aggregation_prompt_has_no_all_wrong_clause_and_repeats_the_format(task):
    candidates = ["cand A ```python\nprint(1)\n```", "cand B", "cand C"]
    text = task.aggregation_prompt(TWO_SUM, candidates)[0]["content"]
    assert "different strategy" not in text and "all of them are wrong" not in text
    assert "3 candidate solutions" in text and "---- Candidate solution 3 ----\ncand C" in text
    tail = text[text.index("---- Candidate solution 3 ----") :]
    assert STARTER.strip() in tail  # the original code-format instruction comes again after the candidates
    refine = task.aggregation_prompt(SUM_PROBLEM, ["only one"])[0]["content"]
    assert "one candidate solution" in refine and "different way" not in refine
    assert STDIN_INSTRUCTION in refine[refine.index("only one") :]


# ----- validation ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "meta, field",
    [
        ({}, "'tests'"),
        ({"tests": "nope"}, "'tests'"),
        ({"tests": {"inputs": "1", "outputs": ["1"]}}, "'tests.inputs'"),
        ({"tests": {"inputs": ["1"], "outputs": []}}, "'tests.outputs'"),
        ({"tests": {"inputs": ["1", "2"], "outputs": ["1"]}}, "'tests.outputs'"),
        ({"tests": {"inputs": [1], "outputs": ["1"]}}, "'tests.inputs[0]'"),
        ({"tests": {"inputs": ["1"], "outputs": ["1"], "fn_name": "not a name"}}, "'tests.fn_name'"),
        ({"tests": SUM_TESTS, "starter_code": 3}, "'starter_code'"),
    ],
)
def test_validate_names_the_field(task, meta, field):
    problem = Problem(id="p", task="code", question="", answer=None, meta=meta)
    with pytest.raises(ValueError, match=re.escape(field)) as info:
        task.validate(problem, "line 7")
    assert str(info.value).startswith("line 7")


def test_validate_does_not_require_an_answer(task):
    task.validate(SUM_PROBLEM, "line 1")
    task.validate(TWO_SUM, "line 2")


# ----- scoring real programs -------------------------------------------------------------------------------------------
def test_stdin_programs_correct_incorrect_partial(task):
    correct = fenced("a, b = map(int, input().split())\nprint(a + b)")
    wrong = fenced("a, b = map(int, input().split())\nprint(a - b)")
    partial = fenced("a, b = map(int, input().split())\nprint(a + b if a < 10 else 0)")
    assert task.score(correct, SUM_PROBLEM) == 1.0 and task.score_fraction(correct, SUM_PROBLEM) == 1.0
    assert task.score(wrong, SUM_PROBLEM) == 0.0 and task.score_fraction(wrong, SUM_PROBLEM) == 0.0
    assert task.score(partial, SUM_PROBLEM) == 0.0
    assert task.score_fraction(partial, SUM_PROBLEM) == pytest.approx(2 / 3)
    assert task.score("I cannot solve this.", SUM_PROBLEM) == 0.0
    assert task.score_fraction(fenced("syntax error("), SUM_PROBLEM) == 0.0


def test_functional_programs_correct_incorrect_partial(task):
    assert task.score(fenced(TWO_SUM_CORRECT), TWO_SUM) == 1.0
    assert task.score(fenced(TWO_SUM_PARTIAL), TWO_SUM) == 0.0
    assert task.score_fraction(fenced(TWO_SUM_PARTIAL), TWO_SUM) == pytest.approx(2 / 3)
    wrong = "class Solution:\n    def twoSum(self, nums, target):\n        return (0, 0)\n"
    assert task.score_fraction(fenced(wrong), TWO_SUM) == 0.0
    # a top-level function works too; tuples compare like lists (JSON)
    plain = Problem(
        id="f", task="code", question="", answer=None,
        meta={"tests": {"inputs": ["3\n4", "[1]\n2"], "outputs": ["[3, 4]", "[[1], 2]"], "fn_name": "pair"}},
    )  # fmt: skip
    assert task.score(fenced("def pair(a, b):\n    return (a, b)"), plain) == 1.0
    missing = fenced("def other(a, b):\n    return 0")
    assert task.score_fraction(missing, plain) == 0.0


def test_score_many_runs_in_parallel_and_matches_single_scores(task):
    completions = [
        fenced("a, b = map(int, input().split())\nprint(a + b)"),
        fenced(TWO_SUM_PARTIAL),
        "no code",
        fenced("print(0)"),
    ]
    problems = [SUM_PROBLEM, TWO_SUM, SUM_PROBLEM, SUM_PROBLEM]
    assert task.score_many(completions, problems) == [1.0, 0.0, 0.0, 0.0]
    fractions = task.score_many(completions, problems, fraction=True)
    assert fractions == pytest.approx([1.0, 2 / 3, 0.0, 0.0])


def test_rsa_score_grades_code_lines():
    from rsa.commands.score import grade_line

    record = {
        "task": "code",
        "completion": fenced("a, b = map(int, input().split())\nprint(a + b)"),
        "tests": SUM_TESTS,
    }
    graded = grade_line(record, "line 1")
    assert graded["score"] == 1.0 and graded["extracted"].startswith("a, b")
    record["completion"] = fenced("print(1)")
    assert grade_line(record, "line 2")["score"] == 0.0
    as_string = {**record, "tests": json.dumps(TWO_SUM_TESTS), "completion": fenced(TWO_SUM_CORRECT)}
    assert grade_line(as_string, "line 4")["score"] == 1.0  # tests serialised as a JSON string work too
    with pytest.raises(ValueError, match="line 3: field 'tests.outputs'"):
        grade_line({**record, "tests": {"inputs": ["1"], "outputs": ["1", "2"]}}, "line 3")


def test_registry_returns_the_code_task():
    assert isinstance(get_task("code"), CodeTask)
    assert get_task("code").equivalence_key("x  =  1\n", SUM_PROBLEM) == get_task("code").equivalence_key(
        "x = 1", SUM_PROBLEM
    )


# ----- LiveCodeBench loader ---------------------------------------------------------------------------------------------
def _compress(cases: list[dict]) -> str:
    """LiveCodeBench's private-test encoding: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def _stdin_record(**overrides) -> dict:
    record = {
        "question_title": "A+B",
        "question_content": "Sum two integers A and B given on one line.",
        "platform": "atcoder",
        "question_id": "abc000_a",
        "contest_id": "abc000",
        "contest_date": "2024-08-03T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": _compress(
            [
                {"input": "5 5\n", "output": "10\n", "testtype": "stdin"},
                {"input": "-1 1\n", "output": "0\n", "testtype": "stdin"},
            ]
        ),
        "metadata": "{}",
    }
    record.update(overrides)
    return record


def _functional_record(**overrides) -> dict:
    record = {
        "question_title": "two-sum",
        "question_content": "Given nums and target, return the indices of the two numbers adding up to target.",
        "platform": "leetcode",
        "question_id": "1",
        "contest_id": "weekly-contest-1",
        "contest_date": "2025-03-01T00:00:00",
        "starter_code": STARTER,
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]),
        "private_test_cases": _compress(
            [
                {"input": "[3, 2, 4]\n6", "output": "[1, 2]", "testtype": "functional"},
                {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"},
            ]
        ),
        "metadata": json.dumps({"func_name": "twoSum"}),
    }
    record.update(overrides)
    return record


@pytest.fixture()
def lcb_jsonl(tmp_path):
    path = tmp_path / "lcb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (_stdin_record(), _functional_record())) + "\n")
    return path


def test_loader_reads_jsonl_with_compressed_private_tests(lcb_jsonl, task):
    problems = load_livecodebench(lcb_jsonl)
    assert [p.id for p in problems] == ["abc000_a", "1"]
    stdin, functional = problems
    assert stdin.task == "code" and stdin.answer is None
    assert stdin.meta["tests"] == {
        "inputs": ["1 2\n", "5 5\n", "-1 1\n"],
        "outputs": ["3\n", "10\n", "0\n"],
        "fn_name": None,
    }
    assert stdin.meta["n_public_tests"] == 1 and stdin.meta["platform"] == "atcoder"
    assert functional.meta["tests"]["fn_name"] == "twoSum" and len(functional.meta["tests"]["inputs"]) == 3
    assert functional.meta["starter_code"] == STARTER and "def twoSum" in functional.question
    for problem in problems:
        task.validate(problem, problem.id)
    # end to end: the loaded problems grade real programs
    assert task.score(fenced("a, b = map(int, input().split())\nprint(a + b)"), stdin) == 1.0
    assert task.score(fenced(TWO_SUM_CORRECT), functional) == 1.0
    assert task.score(fenced(TWO_SUM_PARTIAL), functional) == 0.0


def test_loader_options_and_other_formats(tmp_path, lcb_jsonl):
    public_only = load_livecodebench(lcb_jsonl, include_private=False)
    assert [len(p.meta["tests"]["inputs"]) for p in public_only] == [1, 1]
    assert [p.id for p in load_livecodebench(lcb_jsonl, start_date="2025-01-01")] == ["1"]
    assert [p.id for p in load_livecodebench(lcb_jsonl, end_date="2024-12-31")] == ["abc000_a"]
    assert len(load_livecodebench(lcb_jsonl, limit=1)) == 1
    as_json = tmp_path / "lcb.json"
    as_json.write_text(json.dumps([_stdin_record()]))
    assert load_livecodebench(as_json)[0].id == "abc000_a"
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "release"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([_functional_record()]), folder / "test6.parquet")
    problems = load_livecodebench(folder)
    assert problems[0].meta["tests"]["fn_name"] == "twoSum"
    with pytest.raises(FileNotFoundError):
        load_livecodebench(tmp_path / "missing.jsonl")


def test_loader_errors_name_the_field():
    with pytest.raises(ValueError, match="'metadata.func_name'"):
        problem_from_livecodebench(_functional_record(metadata="{}"))
    with pytest.raises(ValueError, match="'question_content'"):
        problem_from_livecodebench(_stdin_record(question_content=""))
    with pytest.raises(ValueError, match="'public_test_cases'"):
        problem_from_livecodebench(_stdin_record(public_test_cases="{not json and not base64"))
    mixed = json.dumps(
        [{"input": "1", "output": "1", "testtype": "stdin"}, {"input": "1", "output": "1", "testtype": "x"}]
    )
    with pytest.raises(ValueError, match="'testtype'"):
        problem_from_livecodebench(_stdin_record(public_test_cases=mixed, private_test_cases=""))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rsa-pickle-pwned",))


@pytest.mark.parametrize(
    "payload",
    [
        _Exploit(),
        [{"input": "1", "output": "1"}],  # a pickled list (not a JSON string) is refused too
    ],
    ids=["code-execution", "non-string"],
)
def test_compressed_tests_refuse_anything_but_strings(payload, tmp_path):
    marker = "/tmp/rsa-pickle-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    blob = base64.b64encode(zlib.compress(pickle.dumps(payload))).decode()
    with pytest.raises(ValueError, match="private_test_cases"):
        problem_from_livecodebench(_stdin_record(private_test_cases=blob))
    assert not os.path.exists(marker)
    assert decode_test_cases(_compress([{"input": "a", "output": "b"}])) == [{"input": "a", "output": "b"}]
