"""The researcher's daily loop (issue 27, items 1, 4, 5, 6, 7, 9): resume by folder and extend a run, one flag
style, errors reported first with suggestions, a quick error for a missing local model, readable samples, quiet
HTTP logs and files that follow the umask. Real runs use the tiny model on the hf engine."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_eval_cli import base_argv

REPO = Path(__file__).resolve().parents[1]


def eval_argv(model: str, out: Path, *extra: str) -> list[str]:
    """tests/test_eval_cli.py's run at T=1, with a dtype alias; a later option wins over an earlier one."""
    return base_argv(model, out, "--steps", "1", "--dtype", "fp32", *extra)


def population(run: Path, step: int) -> bytes:
    return (run / "population" / f"step_{step:03d}.jsonl").read_bytes()


def records(run: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in population(run, step).decode().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


# ----- 1. resume by folder, resume-if-present, extend a finished run -------------------------------------------
def test_resume_by_folder_alone_and_flags_must_agree(tmp_path, capsys, tiny_model_dir):
    run = tmp_path / "run"
    engine_arg = ["--engine-arg", "attn_implementation=eager"]  # a list option
    code, _, err = run_cli(eval_argv(tiny_model_dir, run, *engine_arg), capsys)
    assert code == 0, err
    # nothing but the folder: model, dataset and settings come from the manifest
    code, out, err = run_cli(["eval", "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    assert "already complete" in out
    # a list option given again replaces the run's value (it does not add to it)
    code, out, err = run_cli(["eval", "--out", str(run), "--resume", *engine_arg], capsys)
    assert code == 0 and "already complete" in out, err
    # an option that disagrees with the run is refused, naming it
    code, _, err = run_cli(["eval", "--out", str(run), "--resume", "--population", "3"], capsys)
    assert code == 2 and "config.population: run has 2, now 3" in err
    # a smaller T is not an extension
    code, _, err = run_cli(["eval", "--out", str(run), "--resume", "--steps", "2"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", "--out", str(run), "--resume", "--steps", "1"], capsys)
    assert code == 2 and "config.steps: run has 2, now 1" in err
    # --resume on a folder without a run says so (not "--model is required")
    code, _, err = run_cli(["eval", "--out", str(tmp_path / "none"), "--resume"], capsys)
    assert code == 2 and "holds no run" in err and "--resume_if_exists" in err


def test_extending_a_finished_run_equals_a_fresh_longer_run(tmp_path, capsys, tiny_model_dir):
    extended, fresh = tmp_path / "extended", tmp_path / "fresh"
    assert run_cli(eval_argv(tiny_model_dir, extended), capsys)[0] == 0
    step1 = population(extended, 1)
    assert not (extended / "population" / "step_002.jsonl").exists()

    code, out, err = run_cli(["eval", "--out", str(extended), "--resume", "--steps", "2"], capsys)
    assert code == 0, err
    assert population(extended, 1) == step1  # steps 1..T unchanged
    assert {r["step"] for r in records(extended, 2)} == {2}  # step T+1 added
    manifest = json.loads((extended / "manifest.json").read_text())
    assert manifest["config"]["steps"] == 2 and manifest["extended"][0]["steps"] == [1, 2]
    assert [json.loads(line)["step"] for line in (extended / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    assert run_cli(eval_argv(tiny_model_dir, fresh, "--steps", "2"), capsys)[0] == 0
    for step in (1, 2):
        assert population(extended, step) == population(fresh, step)
    assert (extended / "final.json").read_bytes() == (fresh / "final.json").read_bytes()
    # the manifest now says T=2: resuming by folder alone finds the run complete
    code, out, _ = run_cli(["eval", "--out", str(extended), "--resume"], capsys)
    assert code == 0 and "already complete" in out


def test_single_agg_cannot_be_extended(tmp_path):
    from rsa.runs import RunDirectory

    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    old = {"config": {"method": "single-agg", "steps": 2}, "model": {}, "problems": {}}
    (run.path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="config.steps: run has 2, now 3"):
        run.check_resumable({**old, "config": {"method": "single-agg", "steps": 3}})
    run.release()


def test_resume_if_exists_starts_then_resumes(tmp_path, capsys, tiny_model_dir):
    run = tmp_path / "run"
    code, out, err = run_cli(eval_argv(tiny_model_dir, run, "--resume_if_exists"), capsys)
    assert code == 0, err
    assert "already complete" not in out and (run / "final.json").is_file()
    code, out, err = run_cli(eval_argv(tiny_model_dir, run, "--resume-if-exists"), capsys)
    assert code == 0 and "already complete" in out


def test_eval_sweep_uses_resume_if_exists():
    script = (REPO / "launch" / "eval_sweep.sh").read_text()
    assert "--resume_if_exists" in script and 'manifest.json" ] &&' not in script


# ----- 4. one flag style -------------------------------------------------------------------------------------------
def test_every_subcommand_takes_both_spellings(tmp_path, capsys):
    from rsa.cli import build_parser

    parser = build_parser()
    dashed = parser.parse_args(["tiny-model", "--out", "x", "--hidden-size", "8", "--vocab-size", "300"])
    under = parser.parse_args(["tiny-model", "--out", "x", "--hidden_size", "8", "--vocab_size", "300"])
    assert (dashed.hidden_size, dashed.vocab_size) == (under.hidden_size, under.vocab_size) == (8, 300)
    demo = parser.parse_args(["demo", "--out", "d", "--train_seeds", "3", "--world", "add"])
    assert demo.train_seeds == [3]
    for spelling in ("--hub_model_id", "--repo-id", "--repo_id", "--hub-model-id"):
        args = parser.parse_args(["publish", "ckpt", "--runs", "r", spelling, "me/m", "--hub_private_repo",
                                  "--hub_revision", "v1"])  # fmt: skip
        assert (args.repo_id, args.private, args.revision) == ("me/m", True, "v1")
    assert parser.parse_args(["publish", "c", "--runs", "r", "--repo-id", "me/m", "--private"]).private


def test_train_takes_both_spellings(tiny_model_dir):
    from rsa.train import parse_args

    recipe = ["--config", str(REPO / "configs" / "recipes" / "cpu_smoke.yaml"), "--model_name_or_path", tiny_model_dir]
    _, dashed, _ = parse_args([*recipe, "--max-steps", "3", "--num_generations", "4"])
    _, under, _ = parse_args([*recipe, "--max_steps", "3", "--num-generations", "4"])
    assert (dashed.max_steps, dashed.num_generations) == (under.max_steps, under.num_generations) == (3, 4)


def test_recipe_problem_names_are_eval_aliases(tmp_path):
    from rsa.commands.config_parser import parse_config
    from rsa.configs import EvalConfig

    common = ["--model", "m", "--out", str(tmp_path / "o")]
    eval_names = parse_config(EvalConfig, [*common, "--dataset", "rg:basic_arithmetic", "--limit", "3", "--size", "9",
                                           "--data_seed", "4"], "rsa eval")  # fmt: skip
    recipe_names = parse_config(EvalConfig, [*common, "--problems", "rg:basic_arithmetic", "--problems_limit", "3",
                                             "--problems-size", "9", "--problems_seed", "4"], "rsa eval")  # fmt: skip
    assert eval_names == recipe_names


def test_augment_hub_options_are_named_as_in_trl(tmp_path, capsys, tiny_model_dir):
    base = ["augment", "--model", tiny_model_dir, "--engine", "hf", "--dataset", "rg:basic_arithmetic",
            "--out", str(tmp_path / "agg")]  # fmt: skip
    # a boolean: `--push_to_hub true` no longer names a repo "true"
    code, _, err = run_cli([*base, "--push_to_hub", "true"], capsys)
    assert code == 2 and "--push_to_hub needs the dataset repo: pass --hub_model_id" in err
    code, _, err = run_cli([*base, "--push-to-hub", "me/agg"], capsys)
    assert code == 2 and "--push_to_hub --hub_model_id me/agg" in err
    code, _, err = run_cli([*base, "--hub_model_id", "me/agg"], capsys)
    assert code == 2 and "add --push_to_hub" in err
    assert not (tmp_path / "agg").exists()


# ----- 5. mistakes: unknown flags first, suggestions, dtype aliases, Ctrl-C, an unreachable Hub ---------------------
def test_unknown_flags_are_reported_first_with_a_suggestion(tmp_path, capsys):
    code, _, err = run_cli(["eval", "--output_path", str(tmp_path / "o")], capsys)  # no --out, --model, --dataset
    assert code == 2 and "unknown option(s) --output_path" in err and "is required" not in err
    code, _, err = run_cli(["eval", "--out", str(tmp_path), "--populaton", "3"], capsys)
    assert code == 2 and "--populaton (did you mean --population?)" in err
    with pytest.raises(SystemExit):
        run_cli(["score", "--inptu", "x.jsonl"], capsys)  # argparse subcommand: before "--input is required"
    assert "unknown option(s) --inptu (did you mean --input?)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("dataset", "hint"),
    [("rg:basic_arithmetc", "did you mean 'basic_arithmetic'?"), ("aime2025", "did you mean 'aime25'?")],
)
def test_dataset_typos_get_a_suggestion(tmp_path, capsys, no_engine, tiny_model_dir, dataset, hint):
    code, _, err = run_cli(eval_argv(tiny_model_dir, tmp_path / "o", "--dataset", dataset), capsys)
    assert code == 2 and hint in err


def test_dtype_aliases(tmp_path, capsys, no_engine, tiny_model_dir):
    from rsa.engines.base import canonical_dtype

    assert [canonical_dtype(n) for n in ("bf16", "fp16", "half", "fp32", "float", "torch.bfloat16", "auto")] == [
        "bfloat16", "float16", "float16", "float32", "float32", "bfloat16", "auto"
    ]  # fmt: skip
    code, _, err = run_cli(eval_argv(tiny_model_dir, tmp_path / "o", "--dtype", "bf8"), capsys)
    assert code == 2 and "--dtype 'bf8': unknown dtype; choose one of auto, bfloat16 (bf16)" in err


def test_ctrl_c_prints_one_line_naming_resume(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    argv = eval_argv(tiny_model_dir, run, "--steps", "60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsa.cli", *argv], env=subprocess_env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (run / "population" / "step_001.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert lines == [
        f"rsa eval: interrupted; what was committed is kept: continue with `rsa eval --out {run} --resume`"
    ]


def test_unreachable_hub_after_augment_prints_one_line_and_keeps_the_dataset(
    tmp_path, capsys, tiny_model_dir, monkeypatch
):
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_unreachable_token")
    out = tmp_path / "agg"
    argv = ["augment", "--model", tiny_model_dir, "--engine", "hf", "--dtype", "float32", "--dataset",
            "rg:basic_arithmetic", "--size", "3", "--num-candidates", "2", "--k", "2", "--candidate-max-tokens", "8",
            "--train-context-len", "512", "--max-completion-length", "16", "--out", str(out), "--no-progress",
            "--push_to_hub", "--hub_model_id", "me/agg"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "push" in line]
    assert line.startswith("rsa augment: could not push to the Hub (") and f"the dataset is kept in {out}" in line
    assert (out / "train.parquet").is_file()

    # what the line says works: once the Hub answers, the same command with --resume pushes the kept build
    from test_publish import HubStandIn

    hub = HubStandIn()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
        code, out_text, err = run_cli([*argv, "--resume"], capsys)
    finally:
        hub.shutdown()
        hub.server_close()
    assert code == 0, err
    assert "pushed to the Hub:" in out_text and "dataset/me/agg" in hub.repos


# ----- 6. a missing local model path -----------------------------------------------------------------------------
@pytest.mark.parametrize("offline", ["1", "0"])
def test_missing_local_model_is_named_at_once(tmp_path, capsys, no_engine, monkeypatch, offline):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    if offline == "0":  # online, but the Hub cannot be reached: one failed request, not a minute of retries
        endpoint = f"http://127.0.0.1:{free_port()}"
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    code, _, err = run_cli(eval_argv("models/tiny", tmp_path / "o"), capsys)
    assert code == 2
    assert f"({tmp_path / 'models' / 'tiny'})" in err
    assert "rsa tiny-model --out models/tiny" in err


# ----- 7. samples you can read -----------------------------------------------------------------------------------
def test_prompts_gold_show_and_score_over_a_run(tmp_path, capsys, tiny_model_dir):
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    assert run_cli(eval_argv(tiny_model_dir, plain, "--steps", "2"), capsys)[0] == 0
    assert run_cli(eval_argv(tiny_model_dir, logged, "--steps", "2", "--log_prompts"), capsys)[0] == 0
    problems = [json.loads(line) for line in (plain / "problems.jsonl").read_text().splitlines()]
    for record in records(plain, 2):
        assert record["gold"] == problems[record["problem_index"]]["answer"]
        assert "prompt" not in record
    step1, step2 = records(logged, 1), records(logged, 2)
    assert step1[0]["prompt"][-1]["content"].startswith(problems[0]["question"].split("\n")[0])
    for record in step2:  # an aggregation prompt holds its parents' texts
        parents = [m for m in step1 if m["problem_index"] == record["problem_index"]]
        for parent in record["parents"]:
            assert parents[parent]["text"].strip() in record["prompt"][-1]["content"]

    code, out, _ = run_cli(["show", str(plain), "--problem", "1"], capsys)
    assert code == 0
    assert f"gold: {problems[1]['answer']}" in out and "== step 1" in out and "== step 2" in out
    (member,) = [r for r in records(plain, 2) if r["problem_index"] == 1 and r["slot"] == 0]
    assert f"[0] answer {member['extracted']!r}  score {member['score']}  parents " in out
    assert run_cli(["show", str(plain), "--problem", problems[0]["id"], "--step", "2"], capsys)[1].count("== step") == 1

    # re-grade a population file: one member edited to the gold answer scores 1, the rest as stored
    lines = population(plain, 1).decode().splitlines()
    edited = json.loads(lines[0])
    edited["text"] = f"<answer>{edited['gold']}</answer>"
    lines[0] = json.dumps(edited)
    (plain / "population" / "step_001.jsonl").write_text("\n".join(lines) + "\n")
    graded = tmp_path / "graded.jsonl"
    code, out, err = run_cli(["score", "--input", str(plain / "population" / "step_001.jsonl"), "--output",
                              str(graded)], capsys)  # fmt: skip
    assert code == 0, err
    result = [json.loads(line) for line in graded.read_text().splitlines()]
    assert (result[0]["score"], result[0]["stored_score"]) == (1.0, 0.0)
    expected = sum(r["score"] for r in result) / len(result)
    assert f"mean score {expected:.4f} over {len(result)} members" in out
    code, out, _ = run_cli(["score", "--input", str(plain)], capsys)  # a whole run, no --output
    assert code == 0 and "step 1: mean score" in out and "step 2: mean score" in out


# ----- 9. quiet HTTP logs, umask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("verbose", [False, True])
def test_openai_engine_request_lines_only_with_verbose(tmp_path, verbose):
    sys.path.insert(0, str(Path(__file__).parent))
    from fault_server import FaultServer

    with FaultServer() as server:
        argv = [
            "eval",
            "--engine",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            server.url,
            "--dataset",
            "rg:basic_arithmetic",
            "--limit",
            "2",
            "--population",
            "2",
            "--k",
            "2",
            "--steps",
            "2",
            "--max-new-tokens",
            "5",
            "--max-model-len",
            "4096",
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
        proc = subprocess.run([sys.executable, "-m", "rsa.cli", *(["-v"] if verbose else []), *argv],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ("HTTP Request: POST" in proc.stderr) is verbose


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    from rsa.augment.output import write_dataset
    from rsa.jsonl import write_json_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "manifest.json", {"a": 1})
        write_dataset([], tmp_path / "train.parquet")
    finally:
        os.umask(old)
    for name in ("manifest.json", "train.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_logging_setup_quietens_http_clients():
    from rsa.cli import _configure_logging

    _configure_logging(False)
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    _configure_logging(True)
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    _configure_logging(False)
