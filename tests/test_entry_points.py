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
