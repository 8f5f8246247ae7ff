"""`rsa score`: grading existing generations, bad lines reported by number, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys

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
