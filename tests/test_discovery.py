"""Discovery: `rsa datasets`, `rsa --version`, `rsa env`, and docs that agree with the code they describe
(engine names and default, the GPU check's pinned versions, one path for the tiny model)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import run_cli

from rsa.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_rsa_datasets_lists_every_builtin_dataset_on_a_line(capsys):
    from rsa.data import BENCHMARKS, RG_COGNITION, RG_GAMES, load_problems

    code, out, _ = run_cli(["datasets"], capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("Also", " "))}
    assert set(lines) == set(BENCHMARKS)
    assert "math-ai/aime25" in lines["aime25"] and "task math" in lines["aime25"]
    assert "futoshiki" in lines["rg-games"]
    # the Reasoning Gym listing is the registry `rg:<task>` loads from: every built-in task is in it, and a
    # listed task generates offline
    code, out, _ = run_cli(["datasets", "--rg"], capsys)
    tasks = out.split()
    assert code == 0 and set(RG_GAMES + RG_COGNITION) <= set(tasks) and "basic_arithmetic" in tasks
    assert len(load_problems("rg:" + tasks[tasks.index("basic_arithmetic")], size=2)) == 2


def test_rsa_version_is_the_package_version():
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    proc = subprocess.run([sys.executable, "-m", "rsa.cli", "--version"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == f"rsa {version} (rsa-rl)"
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_rsa_env_reports_versions_and_devices(capsys):
    import torch

    code, out, _ = run_cli(["env"], capsys)
    assert code == 0
    report = dict(line[2:].split(": ", 1) for line in out.splitlines() if line.startswith("- "))
    for name in ("transformers", "trl", "torch", "numpy"):
        assert report[name] == metadata.version(name)
    assert report["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert report["torch device"].startswith(expected_device)
    assert report["vllm module"] in ("present", "absent") and "platform" in report


def test_engines_doc_states_the_command_line_engine_choices_and_default():
    from rsa.configs import ENGINES, EvalConfig

    text = (REPO / "docs" / "ENGINES.md").read_text()
    default = EvalConfig.__dataclass_fields__["engine"].default
    assert f"defaults\nto `{default}`" in text or f"defaults to `{default}`" in text
    assert f"`--engine` takes exactly {', '.join(f'`{e}`' for e in ENGINES[:-1])} or `{ENGINES[-1]}`" in text
    assert "CPU default" not in text


def test_pinned_versions_in_docs_and_launchers_match_the_gpu_lock():
    lock = {}
    for line in (REPO / "constraints" / "gpu.lock").read_text().splitlines():
        if match := re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", line):
            lock[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
    proc = subprocess.run(["bash", str(REPO / "launch" / "gpu_wheels.sh"), "--print"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = dict(line.split("==") for line in proc.stdout.split())
    assert printed["transformers"] == lock["transformers"] and len(printed) > 40
    assert all(lock[re.sub(r"[-_.]+", "-", name.lower())] == version for name, version in printed.items())
    # no page or launcher pins a GPU-stack package at another version than the lock
    for path in [*DOCS, *sorted((REPO / "launch").glob("*.sh"))]:
        for name, version in re.findall(
            r"\b(transformers|vllm|trl|torch|deepspeed|huggingface_hub)==([\w.]+)", path.read_text()
        ):
            assert version == lock[re.sub(r"[-_.]+", "-", name.lower())], f"{path.name}: {name}=={version}"


def test_the_tiny_model_has_one_path_in_docs_and_configs():
    pages = [*DOCS, *sorted((REPO / "configs").rglob("*.yaml")), REPO / "train" / "grpo_agg.py"]
    paths = set()
    for page in pages:
        paths |= set(re.findall(r"rsa tiny-model --out (\S+?)[`)\s.]", page.read_text()))
        paths |= set(re.findall(r"(?:\.cache/tiny-model|/tmp/tiny\b)", page.read_text()))
    assert paths == {"models/tiny"}
