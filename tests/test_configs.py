"""`rsa.configs` through the real command line: `--config` files with overrides, dashed and underscored
flags, every bad value rejected before an engine is built, and the context-fitting `max_new_tokens` default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from rsa.cli import main

ROOT = Path(__file__).resolve().parents[1]


def eval_argv(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--engine", "hf", "--model", model, "--dataset", "rg:basic_arithmetic", "--limit", "2",
        "-N", "2", "-K", "2", "-T", "2", "--max-new-tokens", "8", "--dtype", "float32", "--no-progress",
        "--out", str(out), *extra,
    ]  # fmt: skip


def augment_argv(model: str, out: Path, *extra: str) -> list[str]:
    return [
        "augment", "--model", model, "--engine", "hf", "--dtype", "float32", "--dataset", "rg:basic_arithmetic",
        "--size", "4", "-M", "2", "-K", "2", "--max-new-tokens", "8", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


# ----- issue 13 finding 6: every bad value is rejected before an engine is built --------------------------------
BAD_VALUES = [
    (["--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
    (["--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["--top-p", "0"], "--top-p must be > 0, got 0.0"),
    (["--top_p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--task", "nosuch"], "--task 'nosuch': choose one of"),
    (["--task", "math"], "Reasoning Gym problems are graded by the rg task; drop --task"),
    (["--size", "0"], "--size must be >= 1, got 0"),
    (["--max-model-len", "8"], "--max-new-tokens 8 leaves no room for a prompt in the model's context of 8 tokens"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_VALUES, ids=[" ".join(e) for e, _ in BAD_VALUES])
@pytest.mark.parametrize("command", ["eval", "augment"])
def test_bad_value_rejected_before_the_engine(command, extra, message, tmp_path, capsys, no_engine, tiny_model_dir):
    out = tmp_path / "out"
    argv = (eval_argv if command == "eval" else augment_argv)(tiny_model_dir, out, *extra)
    if command == "augment" and extra[0] == "--max-model-len":
        message = "--max-new-tokens 8 (candidate length) leaves no room for a prompt in the engine's context of 8"
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert err.startswith(f"rsa {command}: error: ") and message in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "augment"])
@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not a readable JSON manifest"), ("[1, 2]", "expected a JSON object, found a list")],
    ids=["garbage", "json-list"],
)
def test_damaged_manifest_on_resume_names_the_file(
    command, content, message, tmp_path, capsys, no_engine, tiny_model_dir
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    argv = (eval_argv if command == "eval" else augment_argv)(tiny_model_dir, out, "--resume")
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert f"{out / 'manifest.json'}: {message}" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["eval", "augment"])
def test_out_pointing_at_a_file(command, tmp_path, capsys, no_engine, tiny_model_dir):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    code, _, err = run_cli((eval_argv if command == "eval" else augment_argv)(tiny_model_dir, target), capsys)
    assert code == 2 and f"--out {target} is a file, not a directory" in err
    assert target.read_text() == "keep me\n"


def test_argparse_level_errors_exit_2(tmp_path, capsys, no_engine, tiny_model_dir):
    code, _, err = run_cli(eval_argv(tiny_model_dir, tmp_path / "o", "--temperature", "warm"), capsys)
    assert code == 2 and "invalid float value: 'warm'" in err
    code, _, err = run_cli(eval_argv(tiny_model_dir, tmp_path / "o", "--populaton", "3"), capsys)
    assert code == 2 and "unknown option(s) --populaton (did you mean --population?)" in err
    code, _, err = run_cli(eval_argv(tiny_model_dir, tmp_path / "o", "--engine", "tgi"), capsys)
    assert code == 2 and "invalid choice" in err


def test_a_mistyped_command_or_training_option_is_named_with_the_closest_one(capsys):
    from rsa.cli import main

    for typed, meant in (("evl", "eval"), ("tiny_model", "tiny-model")):
        with pytest.raises(SystemExit) as exit_info:  # argparse's exit, as for any usage error
            main([typed, "--out", "x"])
        assert exit_info.value.code == 2
        assert f"unknown command '{typed}' (did you mean {meant}?)" in capsys.readouterr().err
    # training: the unknown option is reported first, not the missing training data that follows from it
    code, _, err = run_cli(["train", "--learnin_rate", "1e-5", "--output_dir", "x"], capsys)
    assert code == 2 and "unknown option(s) --learnin_rate (did you mean --learning_rate?)" in err
    assert len(err.strip().splitlines()) == 1


# ----- flags: dashed and underscored, short aliases, old augment name kept ----------------------------------------
def test_dashed_underscored_and_short_flags_agree(tmp_path):
    from rsa.commands.config_parser import parse_config
    from rsa.configs import AugmentConfig, EvalConfig

    common = ["--model", "m", "--dataset", "rg:basic_arithmetic", "--out", str(tmp_path / "o")]
    dashed = parse_config(EvalConfig, [*common, "--max-new-tokens", "9", "--population", "3", "--k", "2"], "rsa eval")
    under = parse_config(EvalConfig, [*common, "--max_new_tokens", "9", "-N", "3", "-K", "2"], "rsa eval")
    assert dashed == under and dashed.max_new_tokens == 9 and dashed.population == 3
    old = parse_config(AugmentConfig, [*common, "--candidate-max-tokens", "7", "--import", "x.parquet"], "rsa augment")
    assert old.max_new_tokens == 7 and old.import_file == "x.parquet"
    # repeatable list options, mapped to the engine's own keywords
    served = parse_config(
        EvalConfig,
        [*common, "--engine", "openai", "--base-url", "http://a/v1", "--base-url", "http://b/v1", "--batch-size", "8",
         "--engine-arg", "timeout=30", "--engine_arg", "tokenizer=tok"],
        "rsa eval",
    )  # fmt: skip
    assert served.engine_kwargs() == {
        "base_urls": ["http://a/v1", "http://b/v1"], "max_concurrency": 8, "timeout": 30, "tokenizer": "tok",
    }  # fmt: skip


def test_help_names_only_existing_config_files(capsys):
    for command in ("eval", "augment"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--max-new-tokens" in text and "--config FILE.yaml" in text
        for name in re.findall(r"configs/[\w/]+\.yaml", text):
            assert (ROOT / name).is_file(), f"`rsa {command} --help` names {name}, which does not exist"
    assert "--train-context-len" in text and "the engine's context length" in text


# ----- max_new_tokens defaults to what fits the model -------------------------------------------------------------
def test_auto_max_new_tokens_fits_the_context(tmp_path, tiny_model_dir, no_engine):
    from rsa.build_dataset import augment_configs
    from rsa.configs import AugmentConfig, EvalConfig, auto_max_new_tokens
    from rsa.evaluate import prepare_eval

    assert [auto_max_new_tokens(c) for c in (4096, 8192, 32768, 262144)] == [2048, 4096, 8192, 8192]
    common = dict(model=tiny_model_dir, engine="hf", dataset="rg:basic_arithmetic", limit=1, out=str(tmp_path / "o"))
    plan = prepare_eval(EvalConfig(**common))
    assert plan.config.max_new_tokens == 2048  # the tiny model's context is 4096
    assert plan.manifest["config"]["max_new_tokens"] == 2048
    assert prepare_eval(EvalConfig(**common, max_model_len=1000)).config.max_new_tokens == 500
    candidates, mix, _ = augment_configs(AugmentConfig(**common))
    assert (candidates.candidate_max_tokens, mix.max_completion_length, mix.max_model_len) == (2048, 2048, 4096)


# ----- --config files with overrides, end to end on the tiny model -------------------------------------------------
def test_eval_config_file_with_overrides_end_to_end(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "run"
    argv = [
        "eval", "--config", str(ROOT / "configs" / "eval" / "tiny_cpu.yaml"), "--model", tiny_model_dir,
        "--limit", "2", "--population", "2", "--steps", "2", "--max_new_tokens", "8", "--no-progress",
        "--out", str(out),
    ]  # fmt: skip
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    config = manifest["config"]
    # from the file: engine, dtype, dataset, k, seed; from the command line: the rest
    from_file = (config["engine"], config["dtype"], config["dataset"], config["k"])
    assert from_file == ("hf", "float32", "rg:basic_arithmetic", 2)
    assert (config["population"], config["steps"], config["max_new_tokens"], config["limit"]) == (2, 2, 8, 2)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert "pass@1" in stdout


def test_run_eval_library_call_matches_the_cli_config(tmp_path, tiny_model_dir):
    from rsa.configs import EvalConfig
    from rsa.evaluate import run_eval

    config = EvalConfig(
        model=tiny_model_dir, engine="hf", dtype="float32", dataset="rg:basic_arithmetic", limit=2,
        population=2, k=2, steps=2, max_new_tokens=8, progress=False, out=str(tmp_path / "lib"),
    )  # fmt: skip
    summaries = run_eval(config)
    assert [s["step"] for s in summaries] == [1, 2]
    assert json.loads((tmp_path / "lib" / "manifest.json").read_text())["config"]["population"] == 2


# ----- the CPU smoke recipe without its tiny model ------------------------------------------------------------------
def test_training_recipe_with_missing_tiny_model_says_how_to_build_it(tmp_path):
    recipe = ROOT / "configs" / "recipes" / "cpu_smoke.yaml"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "grpo_agg.py"), "--config", str(recipe)],
        cwd=tmp_path,  # no models/tiny here
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model_name_or_path ./models/tiny: no such directory" in proc.stderr
    assert "rsa tiny-model --out ./models/tiny" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----- layering ------------------------------------------------------------------------------------------------------
def test_only_the_cli_layer_imports_argparse():
    offenders = []
    for path in sorted((ROOT / "rsa").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "rsa/cli.py" or relative.startswith("rsa/commands/"):
            continue
        if re.search(r"^\s*(import argparse|from argparse import)", path.read_text(encoding="utf-8"), re.M):
            offenders.append(relative)
    assert offenders == []
