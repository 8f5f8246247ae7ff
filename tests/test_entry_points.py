"""The training entry's three names (rsa train, python -m rsa.train, train/grpo_agg.py) and the packaged recipe."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import rsa.train
from rsa.cli import main
from rsa.toyworld import recipe_path

ROOT = Path(__file__).resolve().parents[1]


def test_grpo_agg_is_a_thin_entry_over_rsa_train():
    spec = importlib.util.spec_from_file_location("grpo_agg", ROOT / "train" / "grpo_agg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main is rsa.train.main and module.cli is rsa.train.cli
    source = (ROOT / "train" / "grpo_agg.py").read_text()
    assert "sys.path" not in source and "accelerate launch --config_file" in module.__doc__


def test_rsa_train_hands_its_arguments_to_the_training_parser(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["train", "--config", str(missing), "--max_steps", "1"]) == 2
    assert f"rsa train: configuration error: recipe {missing} does not exist" in capsys.readouterr().err
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_steps: 1\nuse_cpu: true\n")
    # the recipe parses, the command-line override is applied, and the first check names the missing model
    proc = subprocess.run([sys.executable, "-m", "rsa.train", "--config", str(recipe), "--problems",
                           "rg:basic_arithmetic"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "python -m rsa.train: configuration error: model_name_or_path is required" in proc.stderr


def test_the_repository_recipe_is_the_packaged_one():
    with recipe_path() as packaged:
        assert packaged.resolve() == (ROOT / "rsa" / "resources" / "recipes" / "toy_grpo.yaml").resolve()
        assert (ROOT / "configs" / "recipes" / "toy_grpo.yaml").resolve() == packaged.resolve()
        assert "num_generations:" in packaged.read_text()


def _bad_inputs(tmp_path: Path, model_dir: str) -> dict[str, tuple[list[str], str]]:
    """Recipes with one bad input each, and the line the training entry must print for it."""
    base = f"model_name_or_path: {model_dir}\noutput_dir: {tmp_path / 'out'}\nuse_cpu: true\nnum_generations: 2\n"
    (tmp_path / "corrupt.jsonl").write_text('{"prompt": "a", "task": "math", "answer": "1"}\n{"prompt": "b"\n')
    recipes = {
        "unknown_key": (base + "problems: rg:basic_arithmetic\nno_such_key: 1\n", "Unknown arguments.*no_such_key"),
        "unknown_task": (base + "problems: rg:no_such_task\n", r"unknown Reasoning Gym task\(s\) \['no_such_task'\]"),
        "corrupt_jsonl": (
            base + f"dataset_files: [{tmp_path / 'corrupt.jsonl'}]\n",
            "corrupt.jsonl: line 2: invalid JSON",
        ),
    }
    out = {}
    for name, (text, message) in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        out[name] = (["--config", str(tmp_path / f"{name}.yaml")], message)
    return out


def test_the_training_entry_reports_bad_input_in_one_line(tmp_path, tiny_model_dir, capsys):
    import re

    for name, (argv, message) in _bad_inputs(tmp_path, tiny_model_dir).items():
        assert rsa.train.cli(argv, prog="grpo_agg") == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("grpo_agg: ") and re.search(message, err[0]), (name, err)


def test_accelerate_launch_of_grpo_agg_prints_no_traceback_for_bad_input(tmp_path, tiny_model_dir):
    argv, message = _bad_inputs(tmp_path, tiny_model_dir)["corrupt_jsonl"]
    # --quiet: accelerate's own launcher then adds no stack trace of its own for the failed child (it exits 1)
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", str(ROOT / "train" / "grpo_agg.py"),
         *argv], capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "grpo_agg: configuration error: " in proc.stderr and "corrupt.jsonl: line 2: invalid JSON" in proc.stderr
