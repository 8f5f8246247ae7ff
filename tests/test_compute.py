"""Compute-aware RSA: early stopping per problem and islands (`rsa eval --stop_agreement`, `--islands`).

Islands are checked on the real tiny model (hf engine): M = 1 gives plain RSA's records byte for byte, M > 1
draws every aggregation set inside its island. Early stopping needs answers that agree, which a random tiny
model never gives, so those tests put the openai engine in front of `tests/fault_server.py`, a stand-in
server whose answer is chosen per problem and seed: problem 0 always answers 7 (it converges at step 1),
problem 1 answers by its seed (it never converges), problem 2 mostly 7.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from rsa.cli import main as rsa_main
from rsa.loop import DEFAULT_STOP_AGREEMENT, LoopConfig, island_pools
from tests.fault_server import FaultServer
from tests.killing import sigkill_rsa_when


def _records(run: Path, step: int) -> list[dict]:
    text = (run / "population" / f"step_{step:03d}.jsonl").read_text()
    return [json.loads(line) for line in text.split("\n") if line]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().split("\n") if line]


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "population").glob("step_*.jsonl"))}


def _hf_eval(model: str, out: Path, *extra: str) -> int:
    return rsa_main(["eval", "--engine", "hf", "--model", model, "--dtype", "float32", "--dataset",
                     "rg:basic_arithmetic", "--limit", "3", "--population", "4", "--k", "2", "--steps", "3",
                     "--max_new_tokens", "8", "--seed", "3", "--no-progress", "--out", str(out), *extra])  # fmt: skip


# ----- islands ------------------------------------------------------------------------------------------------
def test_one_island_is_plain_rsa_record_for_record(tiny_model_dir, tmp_path):
    assert _hf_eval(tiny_model_dir, tmp_path / "plain") == 0
    assert _hf_eval(tiny_model_dir, tmp_path / "one", "--islands", "1", "--migrate_every", "2") == 0
    assert _files(tmp_path / "plain") == _files(tmp_path / "one")
    assert (tmp_path / "plain" / "final.json").read_bytes() == (tmp_path / "one" / "final.json").read_bytes()


def test_islands_draw_their_sets_inside_the_island_and_migrate(tiny_model_dir, tmp_path):
    run = tmp_path / "islands"
    assert rsa_main(["eval", "--engine", "hf", "--model", tiny_model_dir, "--dtype", "float32", "--dataset",
                     "rg:basic_arithmetic", "--limit", "2", "--population", "8", "--k", "2", "--steps", "4",
                     "--max_new_tokens", "8", "--islands", "2", "--migrate_every", "2", "--no-progress",
                     "--out", str(run)]) == 0  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["islands"] == 2 and manifest["config"]["migrate_every"] == 2
    crossed = 0
    for step in (2, 3, 4):
        migrating = (step - 1) % 2 == 0
        pools = island_pools(8, 2, migrating=migrating)
        for record in _records(run, step):
            island = record["slot"] // 4
            assert set(record["parents"]) <= set(pools[island]), (step, record["slot"], record["parents"])
            crossed += any(p // 4 != island for p in record["parents"])
    assert crossed > 0  # migrants were drawn: members of one island reached the other


def test_island_pools():
    assert island_pools(6, 1, migrating=True) == [[0, 1, 2, 3, 4, 5]]
    assert island_pools(6, 3, migrating=False) == [[0, 1], [2, 3], [4, 5]]
    assert island_pools(6, 3, migrating=True) == [[4, 1], [0, 3], [2, 5]]


# ----- validation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options,message",
    [
        ({"stop_agreement": 1.5}, "stop_agreement must be a share in (0, 1]"),
        ({"stop_agreement": 0.0}, "stop_agreement must be a share in (0, 1]"),
        ({"stop_agreement": 0.5, "method": "sample"}, "stop_agreement applies to method rsa, not sample"),
        ({"islands": 3}, "islands M=3 must divide the population N=4"),
        ({"islands": 2, "k": 3}, "K=3 is larger than an island (2 members"),
        ({"islands": 0}, "islands M must be >= 1"),
        ({"migrate_every": 0}, "migrate_every must be >= 1"),
        ({"islands": 2, "method": "refine", "k": 1}, "islands apply to method rsa, not refine"),
    ],
)
def test_bad_compute_options_are_one_line_errors_before_any_engine(options, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        LoopConfig(**{"population": 4, "k": 2, "steps": 3, **options})
    argv = ["eval", "--engine", "hf", "--model", str(tmp_path / "no-such-model"), "--dataset", "rg:basic_arithmetic",
            "--population", "4", "--out", str(tmp_path / "run")]  # fmt: skip
    for name, value in {"k": 2, **options}.items():
        argv += [f"--{name}", str(value)]
    assert rsa_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_yes_no_stop_agreement_in_a_config_file_is_refused(tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text("stop_agreement: true\n")  # a share is meant; `true` must not pass as 1
    argv = ["eval", "--engine", "hf", "--model", str(tmp_path / "no-such-model"), "--dataset", "rg:basic_arithmetic",
            "--population", "4", "--k", "2", "--config", str(config), "--out", str(tmp_path / "run")]  # fmt: skip
    assert rsa_main(argv) == 2
    err = capsys.readouterr().err
    assert "stop_agreement must be a share in (0, 1]" in err and "got True" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# ----- early stopping -----------------------------------------------------------------------------------------
def _answer(body: dict) -> str:
    """Problem 0 always 7; problem 1 its seed (never the same twice); problem 2: 7 unless the seed is a multiple of 5."""
    text = json.dumps(body["messages"])
    seed = body.get("seed", 0)
    if "#p0" in text:
        value = 7
    elif "#p1" in text:
        value = seed  # four different answers: never converges
    else:
        value = 8 if seed % 5 == 0 else 7
    return f"The answer is \\boxed{{{value}}}"


@pytest.fixture
def three_problems(tmp_path) -> Path:
    data = tmp_path / "three.jsonl"
    rows = [{"id": f"p{i}", "question": f"What is the number? #p{i}", "answer": "7", "task": "math"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def _served_eval(server: FaultServer, data: Path, out: Path, *extra: str) -> int:
    return rsa_main(["eval", "--engine", "openai", "--model", "fake-model", "--base-url", server.url,
                     "--max_retries", "0", "--dataset", str(data), "--population", "4", "--k", "2", "--steps", "4",
                     "--max_new_tokens", "16", "--seed", "1", "--no-progress", "--out", str(out), *extra])  # fmt: skip


def test_early_stopping_carries_a_converged_population_and_saves_its_generations(three_problems, tmp_path):
    with FaultServer(content_fn=_answer) as server:
        assert _served_eval(server, three_problems, tmp_path / "plain") == 0
        plain_requests = len(server.requests)
        assert _served_eval(server, three_problems, tmp_path / "stop", "--stop_agreement", "0.75") == 0
        stop_requests = len(server.requests) - plain_requests
    assert plain_requests == 3 * 4 * 4
    run = tmp_path / "stop"
    step1 = {(r["problem_index"], r["slot"]): r for r in _records(run, 1)}
    for step in (2, 3, 4):
        for record in _records(run, step):
            if record["problem_index"] == 0:  # all four answered 7 at step 1: stopped there
                assert record["carried_from"] == 1
                first = step1[(0, record["slot"])]
                assert {k: v for k, v in record.items() if k not in ("step", "carried_from")} == {
                    k: v for k, v in first.items() if k != "step"
                }
            elif record["problem_index"] == 1:
                assert "carried_from" not in record  # its answers never agree
    # problem 0 generated only its first step; the other two ran every step unless they converged
    per_problem = {pi: 0 for pi in range(3)}
    for step in (1, 2, 3, 4):
        for record in _records(run, step):
            per_problem[record["problem_index"]] += "carried_from" not in record
    assert per_problem[0] == 4 and per_problem[1] == 16
    assert stop_requests == sum(per_problem.values()) < plain_requests
    metrics = _metrics(run)
    assert [m["problems_stopped"] for m in metrics][0] == 0 and metrics[-1]["problems_stopped"] >= 1
    carried_tokens = sum(r["num_tokens"] for r in _records(run, 2) if "carried_from" in r)
    generated_tokens = sum(r["num_tokens"] for r in _records(run, 2) if "carried_from" not in r)
    assert metrics[1]["tokens_generated"] == generated_tokens and carried_tokens > 0
    per_problem_records = [json.loads(x) for x in (run / "per_problem" / "step_004.jsonl").read_text().split("\n") if x]
    assert per_problem_records[0]["stopped_at"] == 1 and per_problem_records[1]["stopped_at"] is None
    # a stopped problem still counts at later steps, with its last population
    assert metrics[-1]["num_problems"] == 3
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["stop_agreement"] == 0.75
    plain_manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "stop_agreement" not in plain_manifest["config"] and "islands" not in plain_manifest["config"]


def test_early_stopping_gives_the_same_records_under_either_schedule_and_after_a_resume(three_problems, tmp_path):
    with FaultServer(content_fn=_answer) as server:
        assert _served_eval(server, three_problems, tmp_path / "async", "--stop_agreement", "0.75") == 0
        assert _served_eval(server, three_problems, tmp_path / "barrier", "--stop_agreement", "0.75",
                            "--schedule", "barrier") == 0  # fmt: skip
        # problem 1's aggregations fail: the run ends with failures, then resumes once they answer
        server.fail_when = lambda body: (
            "#p1" in json.dumps(body["messages"]) and "Candidate solution" in json.dumps(body)
        )
        assert _served_eval(server, three_problems, tmp_path / "resumed", "--stop_agreement", "0.75") == 3
        server.fail_when = None
        before = len(server.requests)
        assert _served_eval(server, three_problems, tmp_path / "resumed", "--stop_agreement", "0.75", "--resume") == 0
        resumed_requests = len(server.requests) - before
    assert _files(tmp_path / "async") == _files(tmp_path / "barrier")
    assert _files(tmp_path / "async") == _files(tmp_path / "resumed")
    assert (tmp_path / "async" / "final.json").read_bytes() == (tmp_path / "resumed" / "final.json").read_bytes()
    # the resume regenerated only problem 1's failed aggregations (steps 2-4), never problem 0's carried groups
    assert resumed_requests == 3 * 4


def test_bare_stop_agreement_means_unanimous(three_problems, tmp_path):
    with FaultServer(content_fn=_answer) as server:
        assert _served_eval(server, three_problems, tmp_path / "bare", "--stop_agreement") == 0
        assert _served_eval(server, three_problems, tmp_path / "one", "--stop_agreement", "1") == 0
    manifest = json.loads((tmp_path / "bare" / "manifest.json").read_text())
    assert manifest["config"]["stop_agreement"] == DEFAULT_STOP_AGREEMENT == 1.0
    assert _files(tmp_path / "bare") == _files(tmp_path / "one")
    assert any("carried_from" in r for r in _records(tmp_path / "bare", 4))  # problem 0 is unanimous at step 1


# ----- a real kill: both options on, `rsa eval` SIGKILLed in the middle of a step, then resumed ------------------
def test_resume_after_sigkill_with_early_stopping_and_islands_matches_an_uninterrupted_run(three_problems, tmp_path):
    options = ("--stop_agreement", "--islands", "2", "--migrate_every", "2")
    killed = tmp_path / "killed"
    # every answer takes 30 ms, so a step of 12 requests lasts long enough to be killed in
    with FaultServer(content_fn=_answer, delay=0.03) as server:
        argv = ["eval", "--engine", "openai", "--model", "fake-model", "--base-url", server.url, "--max_retries", "0",
                "--dataset", str(three_problems), "--population", "4", "--k", "2", "--steps", "4",
                "--max_new_tokens", "16", "--seed", "1", "--no-progress", "--schedule", "barrier", *options]  # fmt: skip
        metrics = killed / "metrics.jsonl"
        # steps 1 and 2 are committed: kill it inside step 3
        sigkill_rsa_when(
            [*argv, "--out", str(killed)], lambda: metrics.exists() and metrics.read_text().count("\n") >= 2
        )
        assert len(_metrics(killed)) < 4 and not (killed / "final.json").exists()
        assert rsa_main([*argv, "--out", str(killed), "--resume"]) == 0
        assert rsa_main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert _files(killed) == _files(tmp_path / "whole")
    assert (killed / "final.json").read_bytes() == (tmp_path / "whole" / "final.json").read_bytes()
    assert any("carried_from" in r for r in _records(killed, 4))  # the kill interrupted a run that did stop a problem


def test_rsa_report_puts_each_option_in_its_own_group_with_its_tokens(three_problems, tmp_path, capsys):
    runs = tmp_path / "runs"
    with FaultServer(content_fn=_answer) as server:
        for name, extra in (("plain", ()), ("stop", ("--stop_agreement",)), ("islands", ("--islands", "2"))):
            assert _served_eval(server, three_problems, runs / name, *extra) == 0
    assert rsa_main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    groups = {g["group"]: g for g in csv.DictReader((tmp_path / "report" / "groups.csv").open())}
    assert len(groups) == 3
    (plain,) = [g for name, g in groups.items() if "islands=None" in name and "stop_agreement=None" in name]
    (stop,) = [g for name, g in groups.items() if "stop_agreement=1.0" in name]
    (islands,) = [g for name, g in groups.items() if "islands=2" in name]
    tokens = {name: sum(m["tokens_generated"] for m in _metrics(runs / name)) / 3 for name in ("plain", "stop")}
    assert float(plain["tokens per problem mean"]) == pytest.approx(tokens["plain"], abs=0.01)
    assert float(stop["tokens per problem mean"]) == pytest.approx(tokens["stop"], abs=0.01)
    assert tokens["stop"] < tokens["plain"]  # problem 0 stopped after step 1
    assert islands["pass@N step T (%) mean"] != "" and islands["pass@1 step T (%) mean"] != ""
