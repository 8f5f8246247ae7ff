"""Run directories: atomic writes, torn-line repair, manifest, resume refusal, and resume == uninterrupted
(fault injection on the fake engine; a real SIGKILL of `rsa eval` on the tiny model through the hf engine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.evaluate import evaluate
from rsa.jsonl import append_jsonl, write_json_atomic
from rsa.loop import LoopConfig
from rsa.provenance import model_revision
from rsa.runs import METRICS, RunDirectory, build_manifest
from rsa.tasks import Problem
from rsa.tasks.base import PROMPT_VERSION
from tests.killing import sigkill_rsa_when

REPO = Path(__file__).resolve().parents[1]


def problems(n: int = 3) -> list[Problem]:
    return [Problem(id=f"m{i}", task="math", question=f"What is {i} + 1?", answer=str(i + 1)) for i in range(n)]


def new_run(path: Path, items, config: dict | None = None) -> RunDirectory:
    run_dir = RunDirectory(path)
    run_dir.create(
        build_manifest(config or {"population": 4}, model="m", engine="fake", revision="r", problems=items, seed=1),
        items,
    )
    return run_dir


def records(run_path: Path) -> dict[str, list]:
    """Every committed record of a run, wall times removed (they differ between runs)."""
    out = {}
    for path in sorted(run_path.rglob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row.pop("wall_time_s", None)
        out[str(path.relative_to(run_path))] = rows
    out["final"] = json.loads((run_path / "final.json").read_text())
    return out


# ----- files --------------------------------------------------------------------------------------------------
def test_atomic_json_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: fails before the rename
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_torn_metrics_line_is_cut_off(tmp_path):
    run_dir = new_run(tmp_path / "run", problems(1))
    for step in (1, 2):
        (run_dir.path / "population").mkdir(exist_ok=True)
        run_dir.step_file("population", step).write_text("")
        append_jsonl(run_dir.path / METRICS, {"step": step, "pass_at_1": 0.5})
    with open(run_dir.path / METRICS, "a") as fh:
        fh.write('{"step": 3, "pass_at_')  # killed mid-write
    assert [s["step"] for s in run_dir.completed_steps()] == [1, 2]
    assert (run_dir.path / METRICS).read_text().count("\n") == 2
    assert (run_dir.path / METRICS).read_text().endswith("}\n")


def test_committed_step_without_population_is_an_error(tmp_path):
    run_dir = new_run(tmp_path / "run", problems(1))
    append_jsonl(run_dir.path / METRICS, {"step": 1})
    with pytest.raises(ValueError, match="step 1 is committed but its population file is missing"):
        run_dir.completed_steps()


def test_run_directory_layout(tmp_path, fake_engine):
    items = problems(2)  # answers "1" and "2"
    run_dir = new_run(tmp_path / "run", items)
    config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=64)
    # two words per completion, answer seed % 3: some candidates right, some wrong, all values known per seed
    engine = fake_engine(text_fn=lambda seed, conversation: f"work \\boxed{{{seed % 3}}}")
    summaries = evaluate(engine, items, config, run_dir, progress=False)
    assert [s["step"] for s in summaries] == [1, 2, 3]
    answers = {p.id: p.answer for p in items}
    seen_scores = set()
    for step, summary in zip((1, 2, 3), summaries):
        population = [json.loads(line) for line in run_dir.step_file("population", step).read_text().splitlines()]
        assert sorted((r["problem_id"], r["slot"]) for r in population) == [
            (p, s) for p in ("m0", "m1") for s in range(4)
        ]
        for r in population:  # each record is what the engine returned for its seed, scored against its problem
            assert r["text"] == f"work \\boxed{{{r['seed'] % 3}}}" and r["num_tokens"] == 2
            assert r["extracted"] == str(r["seed"] % 3)
            assert r["score"] == float(r["extracted"] == answers[r["problem_id"]])
            assert (
                r["parents"] == []
                if step == 1
                else (len(set(r["parents"])) == 2 and set(r["parents"]) <= set(range(4)))
            )
        scores = {p: [r["score"] for r in population if r["problem_id"] == p] for p in ("m0", "m1")}
        seen_scores.update(scores["m0"] + scores["m1"])
        assert summary["pass_at_1"] == pytest.approx(sum(sum(v) / 4 for v in scores.values()) / 2)
        assert summary["pass_at_n"] == pytest.approx(sum(max(v) for v in scores.values()) / 2)
        assert (summary["mean_length"], summary["tokens_generated"]) == (2.0, 2 * 4 * 2)
        assert summary["wall_time_s"] >= 0
        per_problem = [json.loads(line) for line in run_dir.step_file("per_problem", step).read_text().splitlines()]
        assert [(r["problem_id"], r["pass_at_1"]) for r in per_problem] == [
            (p, sum(scores[p]) / 4) for p in ("m0", "m1")
        ]
    assert seen_scores == {0.0, 1.0}, "right and wrong candidates both occur, so the score checks can fail"
    final = json.loads((run_dir.path / "final.json").read_text())
    assert final["rule"] == "random" and len(final["answers"]) == 2
    assert not list(run_dir.path.rglob("*.tmp"))


def test_create_refuses_existing_run(tmp_path):
    new_run(tmp_path / "run", problems(1))
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        new_run(tmp_path / "run", problems(1))


# One writer per run folder: the script a competing process runs (create, or --resume's check), then waits
WRITER = """
import socket, sys, time
from pathlib import Path
from rsa.runs import RunDirectory, RunFolderError, build_manifest
from rsa.tasks import Problem

path, mode, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
items = [Problem(id="m0", task="math", question="What is 0 + 1?", answer="1")]
manifest = build_manifest({"population": 4}, model="m", engine="fake", revision="r", problems=items, seed=1)
print("READY", flush=True)  # imported and about to poll: the test starts the race only when all are ready
while not go.exists():  # start together
    time.sleep(0.001)
run_dir = RunDirectory(path)
try:
    run_dir.create(manifest, items) if mode == "create" else run_dir.check_resumable(manifest)
    print("WROTE", flush=True)
except RunFolderError as exc:
    print("REFUSED", exc, flush=True)
    sys.exit(3)
time.sleep(float(sys.argv[4]))  # stay the writer a while
"""


def start_writer(path: Path, mode: str, go: Path, hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), mode, str(go), str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_processes_creating_one_run_folder_at_once_get_one_writer(tmp_path):
    go = tmp_path / "go"
    writers = [start_writer(tmp_path / "run", "create", go, 2.0) for _ in range(2)]
    assert [w.stdout.readline() for w in writers] == ["READY\n", "READY\n"]  # both up and polling
    go.touch()
    outputs = [w.communicate(timeout=60)[0] for w in writers]
    codes = sorted(w.returncode for w in writers)
    assert codes == [0, 3], outputs
    refused = next(out for out in outputs if out.startswith("REFUSED"))
    winner = next(w for w in writers if w.returncode == 0)
    # the loser names the holder, or (when the winner had already finished) finds its run
    assert f"pid {winner.pid} on host {socket.gethostname()}" in refused or "already holds a run" in refused
    assert (tmp_path / "run" / "manifest.json").exists()


def test_a_second_resume_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path):
    run_path = tmp_path / "run"
    go = tmp_path / "go"
    go.touch()
    assert start_writer(run_path, "create", go, 0.0).wait(timeout=60) == 0
    holder = start_writer(run_path, "resume", go, 60.0)
    try:
        assert holder.stdout.readline() == "READY\n" and holder.stdout.readline().startswith("WROTE")
        second = RunDirectory(run_path)
        with pytest.raises(FileExistsError, match=f"in use by another writer \\(pid {holder.pid} on host "):
            second.check_resumable(RunDirectory(run_path).manifest)
        holder.send_signal(signal.SIGKILL)  # a killed writer leaves no stuck lock
        holder.wait(timeout=30)
        second.check_resumable(second.manifest)
        assert f"pid {os.getpid()} " in (run_path / ".lock").read_text()
    finally:
        holder.kill()
        holder.wait()


# ----- manifest and resume checks -----------------------------------------------------------------------------
def test_manifest_records_provenance(tiny_model_dir):
    manifest = build_manifest(
        {"population": 4, "seed": 9},
        model=tiny_model_dir,
        engine="hf",
        revision=model_revision(tiny_model_dir),
        problems=problems(2),
        seed=9,
    )
    assert manifest["prompt_version"] == PROMPT_VERSION
    assert manifest["model"]["revision"].startswith("sha256:")
    assert manifest["model"]["revision"] == model_revision(tiny_model_dir)  # stable
    assert manifest["packages"]["numpy"] and manifest["packages"]["transformers"]
    assert manifest["seeds"]["run_seed"] == 9
    assert manifest["problems"]["count"] == 2 and len(manifest["problems"]["sha256"]) == 64
    assert model_revision("served-name", query_hub=False) is None


def test_resume_refuses_changed_config_and_names_keys(tmp_path):
    items = problems(2)
    run_dir = new_run(tmp_path / "run", items, {"population": 4, "seed": 1, "batch_size": 8})
    changed = build_manifest(
        {"population": 8, "seed": 2, "batch_size": 8}, model="m", engine="fake", revision="r", problems=items, seed=2
    )
    with pytest.raises(ValueError, match=r"config.population: run has 4, now 8.*config.seed: run has 1, now 2"):
        run_dir.check_resumable(changed)
    other_data = build_manifest(
        {"population": 4, "seed": 1, "batch_size": 8},
        model="m",
        engine="fake",
        revision="r",
        problems=items[:1],
        seed=1,
    )
    with pytest.raises(ValueError, match="problems.sha256"):
        run_dir.check_resumable(other_data)
    # where it runs may change: batch size is operational
    same = build_manifest(
        {"population": 4, "seed": 1, "batch_size": 2}, model="m", engine="fake", revision="r", problems=items, seed=1
    )
    run_dir.check_resumable(same)


@pytest.mark.parametrize(("method", "fail_on_call"), [("rsa", 3), ("majority", 3), ("refine", 3), ("single-agg", 2)])
def test_resume_after_crash_equals_uninterrupted(tmp_path, fake_engine, method, fail_on_call):
    items = problems(3)
    config = LoopConfig(method=method, population=4, k=2, steps=4, max_new_tokens=64, seed=5)
    whole = new_run(tmp_path / "whole", items)
    evaluate(fake_engine(), items, config, whole, progress=False)

    broken = new_run(tmp_path / "broken", items)
    with pytest.raises(RuntimeError, match=f"injected failure on generate call {fail_on_call}"):
        evaluate(fake_engine(fail_on_call=fail_on_call), items, config, broken, progress=False)
    assert len(broken.completed_steps()) == fail_on_call - 1
    assert not (broken.path / "final.json").exists()
    engine = fake_engine()
    evaluate(engine, items, config, broken, progress=False)
    assert len(engine.calls) == config.num_steps - fail_on_call + 1  # only the missing steps were generated
    assert records(broken.path) == records(whole.path)
    # a complete run needs no engine to be finished again
    assert evaluate(None, items, config, broken, progress=False) == broken.completed_steps()


# ----- a real kill: `rsa eval` on the tiny model through the hf engine -----------------------------------------
def eval_argv(model: str, out: Path) -> list[str]:
    return [
        "eval", "--engine", "hf", "--model", model, "--dataset", "rg:basic_arithmetic", "--limit", "2",
        "--population", "4", "--k", "2", "--steps", "4", "--max-new-tokens", "16", "--seed", "11",
        "--dtype", "float32", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    from rsa.cli import main

    killed = tmp_path / "killed"
    metrics = killed / METRICS
    # step 2 is committed: kill it in the middle of step 3
    sigkill_rsa_when(
        eval_argv(tiny_model_dir, killed), lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, 180, 0.01
    )
    committed = RunDirectory(killed).completed_steps()
    assert 2 <= len(committed) < 4
    assert not (killed / "final.json").exists()

    assert main([*eval_argv(tiny_model_dir, killed), "--resume"]) == 0
    assert main(eval_argv(tiny_model_dir, tmp_path / "whole")) == 0
    assert records(killed) == records(tmp_path / "whole")


def test_the_api_key_is_never_written_into_the_run_and_a_resume_takes_it_from_the_environment(tmp_path, monkeypatch):
    from rsa.cli import main
    from tests.fault_server import FaultServer

    run_path, secret = tmp_path / "run", "sk-test-do-not-record"
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer(content="The answer is \\boxed{2}") as server:
        argv = ["eval", "--engine", "openai", "--model", "fake-model", "--base-url", server.url, "--dataset",
                "rg:basic_arithmetic", "--limit", "2", "-N", "2", "-K", "2", "-T", "2", "--max-new-tokens", "8",
                "--no-progress", "--out", str(run_path)]  # fmt: skip
        assert main([*argv, "--api-key", secret]) == 0
        assert set(server.authorizations) == {f"Bearer {secret}"}
        for path in run_path.rglob("*"):
            assert not path.is_file() or secret not in path.read_text(errors="replace"), path
        assert json.loads((run_path / "manifest.json").read_text())["config"]["api_key"] is None
        monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
        before = len(server.authorizations)
        assert main(["eval", "--out", str(run_path), "--resume", "--steps", "3", "--no-progress"]) == 0
        assert set(server.authorizations[before:]) == {"Bearer sk-from-env"}


def test_rsa_eval_resume_is_refused_while_another_writer_runs_there(tmp_path, tiny_model_dir, no_engine, capsys):
    from rsa.cli import main

    run_path, go = tmp_path / "run", tmp_path / "go"
    go.touch()
    holder = start_writer(run_path, "create", go, 60.0)  # holds the run folder as `rsa eval` would
    try:
        assert holder.stdout.readline() == "READY\n" and holder.stdout.readline().startswith("WROTE")
        argv = ["eval", "--engine", "hf", "--model", tiny_model_dir, "--dataset", "rg:basic_arithmetic", "--limit",
                "2", "-N", "2", "-K", "2", "-T", "2", "--max-new-tokens", "8", "--out", str(run_path), "--resume"]  # fmt: skip
        assert main(argv) == 2  # refused before any engine is built (no_engine)
        err = capsys.readouterr().err
        assert f"is in use by another writer (pid {holder.pid} on host {socket.gethostname()})" in err
    finally:
        holder.kill()
        holder.wait()
