"""`rsa score`: grading existing generations, bad lines reported by number, atomic output."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rsa.cli import main
from rsa.data import generate_reasoning_gym


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_score_grades_good_lines_and_reports_bad_ones(tmp_path, capsys):
    rg = generate_reasoning_gym(["basic_arithmetic"], 1, seed=9)[0]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "graded.jsonl"
    write_lines(src, [
        {"task": "math", "completion": r"thus \boxed{\frac{6}{4}}", "answer": "1.5", "id": "m1"},
        {"task": "rg", "completion": f"<answer>{rg.answer}</answer>", "answer": rg.answer,
         "dataset_name": "basic_arithmetic", "entry": json.dumps(rg.meta["entry"])},
        {"task": "mcq", "completion": r"\boxed{\text{C}}", "answer": "B"},
        "{this is not json",
        {"task": "math", "answer": "1"},
        {"task": "rg", "completion": "<answer>1</answer>", "answer": "1", "dataset_name": "basic_arithmetic"},
        {"task": "math", "completion": "no box", "answer": "2"},
    ])  # fmt: skip
    code = main(["score", "--input", str(src), "--output", str(dst)])
    assert code == 1  # some lines were bad
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(r.get("extracted"), r["score"]) for r in out] == [
        (r"\frac{6}{4}", 1.0), (rg.answer, 1.0), ("C", 0.0), (None, 0.0)
    ]  # fmt: skip
    assert out[0]["id"] == "m1"  # input fields are kept
    err = capsys.readouterr().err
    assert "in.jsonl: line 4: invalid JSON" in err
    assert "line 5: field 'completion' is missing" in err
    assert "line 6: field 'entry' is missing" in err
    assert not list(dst.parent.glob(".*.tmp"))  # no temporary file left behind


def test_score_console_script_missing_input(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rsa.cli", "score", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "nope.jsonl does not exist" in proc.stderr


# ----- exact JSONL (one test per finding, through the real CLI) -----------------------------------------------
def test_score_keeps_u2028_and_u0085_inside_one_record(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    odd = "first\u2028second\u0085third \\boxed{4}"
    records = [{"task": "math", "completion": odd, "answer": "4"}, {"task": "math", "answer": "1"}]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "rsa.cli", "score", "--input", str(src), "--output", str(dst)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "in.jsonl: line 2: field 'completion' is missing" in proc.stderr  # numbering not shifted
    (out,) = [json.loads(line) for line in dst.read_text(encoding="utf-8").split("\n") if line]
    assert out["completion"] == odd and out["score"] == 1.0


def test_score_names_the_line_with_invalid_utf8(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    good = json.dumps({"task": "math", "completion": "\\boxed{2}", "answer": "2"}).encode()
    src.write_bytes(good + b"\n" + b'{"task": "math", "completion": "\xff\xfe", "answer": "2"}\n' + good + b"\n")
    assert main(["score", "--input", str(src), "--output", str(dst)]) == 1
    assert "in.jsonl: line 2: invalid UTF-8" in capsys.readouterr().err
    assert [json.loads(line)["score"] for line in dst.read_text().splitlines()] == [1.0, 1.0]


def test_score_refuses_output_equal_to_input(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    write_lines(src, [{"task": "math", "completion": "\\boxed{2}", "answer": "2"}, "{bad json"])
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "in.jsonl"  # the same file, spelled differently
    assert main(["score", "--input", str(src), "--output", str(same)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_score_rejects_a_list_valued_answer_with_its_line(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [
        {"task": "math", "completion": "\\boxed{[1, 2]}", "answer": [1, 2]},
        {"task": "math", "completion": "\\boxed{3}", "answer": 3},
    ])  # fmt: skip
    assert main(["score", "--input", str(src), "--output", str(dst)]) == 1
    assert "in.jsonl: line 1: field 'answer' must be text or a number, got list" in capsys.readouterr().err
    assert [json.loads(line)["score"] for line in dst.read_text().splitlines()] == [1.0]


def test_a_graded_program_cannot_read_the_graders_input(capsys):
    """A hostile program searches the world-readable input file of `rsa score` for its own test and prints the
    expected output it finds there; the sandbox must not show it that file (nor its folder)."""
    from rsa.sandbox import default_sandbox

    if default_sandbox().mode != "bwrap":
        pytest.skip("needs bubblewrap isolation (apt-get update && apt-get install -y bubblewrap)")
    marker = f"MARK-{secrets.token_hex(6)}"
    folder = tempfile.mkdtemp(prefix="rsa-score-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    try:
        os.chmod(folder, 0o755)  # world-readable, as a user's data folder usually is
        src, dst = Path(folder) / "in.jsonl", Path(folder) / "graded.jsonl"
        cheat = (
            "import json, os, sys\n"
            "marker = sys.stdin.read().strip()\n"
            f"for folder in [{folder!r}, os.getcwd(), '/var/tmp']:\n"
            "    for root, _, names in os.walk(folder):\n"
            "        for name in names:\n"
            "            try:\n"
            "                lines = open(os.path.join(root, name)).read().splitlines()\n"
            "            except OSError:\n"
            "                continue\n"
            "            for line in lines:\n"
            "                if marker in line:\n"
            "                    tests = json.loads(line)['tests']\n"
            "                    print(tests['outputs'][tests['inputs'].index(marker + '\\n')])\n"
            "                    sys.exit(0)\n"
            "print('not found')\n"
        )
        record = {
            "task": "code",
            "completion": f"```python\n{cheat}```\n",
            "tests": {"inputs": [marker + "\n"], "outputs": ["expected-output-only-the-grader-knows\n"]},
        }
        write_lines(src, [record])
        os.chmod(src, 0o644)
        assert main(["score", "--input", str(src), "--output", str(dst)]) == 0
        assert [json.loads(line)["score"] for line in dst.read_text().splitlines()] == [0.0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_score_refuses_nan_answers_and_never_writes_bare_nan(tmp_path, capsys):
    src, dst = tmp_path / "in.jsonl", tmp_path / "graded.jsonl"
    src.write_text(
        '{"task": "math", "completion": "\\\\boxed{nan}", "answer": NaN}\n'
        '{"task": "math", "completion": "\\\\boxed{1}", "answer": "1", "temperature": Infinity}\n'
        '{"task": "math", "completion": "\\\\boxed{2}", "answer": "2"}\n'
    )
    assert main(["score", "--input", str(src), "--output", str(dst)]) == 1

    def refuse(token):
        raise AssertionError(f"bare {token} written")

    out = [json.loads(line, parse_constant=refuse) for line in dst.read_text().splitlines()]
    assert [r["score"] for r in out] == [1.0]
    err = capsys.readouterr().err
    assert "in.jsonl: line 1: field 'answer' is nan" in err
    assert "in.jsonl: line 2: holds NaN or Infinity, which JSON does not allow" in err
