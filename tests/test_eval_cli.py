"""`rsa eval`, `rsa report`, `rsa demo`: input validated before any model loads, clear errors, and real runs
on the tiny model (hf engine; vllm when installed, marked slow)."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path

import pytest
from conftest import run_cli

from rsa.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def base_argv(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--engine", "hf", "--model", model, "--dataset", "rg:basic_arithmetic", "--limit", "2",
        "--population", "2", "--k", "2", "--steps", "2", "--max-new-tokens", "8", "--dtype", "float32",
        "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


# ----- input errors, before any model is loaded ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--population", "2", "--k", "4"], "K=4 is larger than the population N=2"),
        (["--steps", "0"], "steps T must be >= 1"),
        (["--dataset", "no-such-benchmark"], "unknown dataset 'no-such-benchmark'"),
        (["--dataset", "rg:no_such_task"], "unknown Reasoning Gym task"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--method", "single-agg", "--steps", "1"], "single-agg needs steps T >= 2"),
        (["--max-new-tokens", "8192"], "leaves no room for a prompt in the model's context of 4096 tokens"),
    ],
)
def test_bad_input_is_reported_before_loading(tmp_path, capsys, no_engine, tiny_model_dir, extra, message):
    out = tmp_path / "run"
    code, _, err = run_cli(base_argv(tiny_model_dir, out, *extra), capsys)
    assert code == 2
    assert message in err
    assert err.startswith("rsa eval: error:")
    assert not out.exists()


def test_missing_model_path(tmp_path, capsys, no_engine):
    code, _, err = run_cli(base_argv(str(tmp_path / "nowhere"), tmp_path / "run"), capsys)
    assert code == 2 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(base_argv(str(tmp_path / "empty"), tmp_path / "run"), capsys)
    assert code == 2 and "not a model directory (expected a config.json inside)" in err


def test_unknown_hub_model_offline(tmp_path, capsys, no_engine, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(base_argv("no-such-org/no-such-model", tmp_path / "run"), capsys)
    assert code == 2 and "not in the Hugging Face cache" in err


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_eval_configs_parse_and_validate(path):
    from rsa.commands.config_parser import parse_config
    from rsa.configs import EvalConfig

    config = parse_config(EvalConfig, ["--config", str(path)], prog="rsa eval")
    assert config.model and config.dataset and config.out
    # a command-line option overrides the file
    assert parse_config(EvalConfig, ["--config", str(path), "--seed", "7"], prog="rsa eval").seed == 7


def test_missing_dataset_column(tmp_path, capsys, no_engine, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"question": "1+1?", "answer": "2", "task": "math"})
        + "\n"
        + json.dumps({"question": "2+2?", "task": "math"})
        + "\n"
    )
    argv = base_argv(tiny_model_dir, tmp_path / "run")
    argv[argv.index("--dataset") + 1] = str(data)
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert f"{data}: line 2: field 'answer'" in err


def test_engine_option_for_another_engine(tmp_path, capsys, no_engine, tiny_model_dir):
    code, _, err = run_cli(base_argv(tiny_model_dir, tmp_path / "run", "--base-url", "http://localhost:1/v1"), capsys)
    assert code == 2 and "--base-url" in err and "openai" in err


def test_config_file_and_command_line_precedence(tmp_path, capsys, no_engine, tiny_model_dir):
    config = tmp_path / "eval.yaml"
    config.write_text("population: 1\nthinking: sideways\n")
    code, _, err = run_cli([*base_argv(tiny_model_dir, tmp_path / "run"), "--config", str(config)], capsys)
    # the file's thinking mode is used; its population 1 is overridden by --population 2 (else K=2 > N=1)
    assert code == 2 and "unknown thinking mode 'sideways'; choose one of strip, keep" in err
    config.write_text("populaton: 3\n")
    code, _, err = run_cli([*base_argv(tiny_model_dir, tmp_path / "run"), "--config", str(config)], capsys)
    assert code == 2 and "unknown option(s) populaton" in err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


@pytest.mark.parametrize("context", [[], ["--max-model-len", "1024", "--max-retries", "0"]])
def test_unreachable_openai_server(tmp_path, capsys, context):
    # without --max-model-len the engine asks the server's /models; with it the first generate call fails
    port = closed_port()
    argv = [
        "eval", "--engine", "openai", "--model", "tiny", "--base-url", f"http://127.0.0.1:{port}/v1",
        "--dataset", "rg:basic_arithmetic", "--limit", "1", "--population", "2", "--k", "2", "--steps", "2",
        "--max-new-tokens", "8", "--no-progress", "--out", str(tmp_path / "run"), *context,
    ]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    assert err.startswith("rsa eval: engine error:")
    assert f"127.0.0.1:{port}" in err
    assert "Traceback" not in err


# ----- real runs ----------------------------------------------------------------------------------------------
def test_eval_then_report_on_tiny_model(tmp_path, capsys, tiny_model_dir):
    rsa_run, sample_run = tmp_path / "rsa", tmp_path / "sample"
    code, out, _ = run_cli(base_argv(tiny_model_dir, rsa_run, "--steps", "3"), capsys)
    assert code == 0, out
    code, _, _ = run_cli(base_argv(tiny_model_dir, sample_run, "--method", "sample", "--steps", "3"), capsys)
    assert code == 0
    lines = [json.loads(line) for line in (rsa_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    # the printed table holds the recorded metrics, one row per step, in the header's column order
    table = out.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:3] == ["step", "pass@1", "pass@N"])
    rows = [line.split() for line in table[header + 1 : header + 4]]
    assert rows == [
        [str(m["step"]), f"{m['pass_at_1']:.4f}", f"{m['pass_at_n']:.4f}", f"{m['majority']:.4f}",
         f"{m['mean_length']:.1f}", f"{m['distinct_answers']:.2f}"]
        for m in lines
    ]  # fmt: skip
    manifest = json.loads((rsa_run / "manifest.json").read_text())
    assert manifest["config"]["population"] == 2 and manifest["engine"] == "hf"
    assert manifest["model"]["revision"].startswith("sha256:")

    # running again into the same directory without --resume is refused; with --resume it is a no-op
    code, _, err = run_cli(base_argv(tiny_model_dir, rsa_run, "--steps", "3"), capsys)
    assert code == 2 and "already holds a run; pass --resume" in err
    code, _, err = run_cli(base_argv(tiny_model_dir, rsa_run, "--steps", "3", "--population", "3", "--resume"), capsys)
    assert code == 2 and "config.population: run has 2, now 3" in err
    code, out, _ = run_cli(base_argv(tiny_model_dir, rsa_run, "--steps", "3", "--resume"), capsys)
    assert code == 0 and "already complete" in out

    report = tmp_path / "report"
    code, out, _ = run_cli(["report", str(rsa_run), str(sample_run), "--out", str(report)], capsys)
    assert code == 0
    assert (report / "rsa_steps.png").read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader((report / "report.csv").open()))
    assert [r["run"] for r in rows] == ["rsa", "sample"]
    assert rows[0]["steps_done"] == "3" and rows[1]["method"] == "sample"
    assert "| rsa |" in (report / "report.md").read_text()
    code, _, err = run_cli(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "not a run directory" in err


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.slow
def test_eval_through_openai_engine_against_vllm_server(tmp_path, capsys, vllm_server, tiny_model_dir):
    out = tmp_path / "served"
    argv = [
        "eval", "--engine", "openai", "--model", vllm_server.model, "--base-url", vllm_server.url,
        "--engine-arg", f"tokenizer={tiny_model_dir}", "--max-model-len", "1024",
        "--dataset", "rg:basic_arithmetic", "--limit", "3", "--population", "4", "--k", "2", "--steps", "3",
        "--max-new-tokens", "16", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(m["tokens_generated"] > 0 for m in lines)
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "rsa_steps.png").read_bytes()[:8] == PNG_MAGIC


def test_a_question_longer_than_the_context_is_reported_before_the_engine_loads(tmp_path, capsys, no_engine,
                                                                                 tiny_model_dir):  # fmt: skip
    data = tmp_path / "long.jsonl"
    rows = [{"question": "What is 1 + 1?", "answer": "2", "id": "short"},
            {"question": "Add these numbers: " + " + ".join(["1"] * 3000), "answer": "3000", "id": "long"}]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = base_argv(tiny_model_dir, tmp_path / "run")
    argv[argv.index("--dataset") + 1] = str(data)
    code, _, err = run_cli(argv, capsys)  # no_engine: building the engine first would fail the test
    assert code == 2
    assert "problem 'long': " in err and "the question is never truncated" in err
    assert not (tmp_path / "run").exists()
