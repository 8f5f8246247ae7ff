"""Packaging: `import rsa` is this project, not python-rsa; no dependency needs python-rsa; the wheel works installed."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import rsa

ROOT = Path(__file__).resolve().parents[1]


def test_import_rsa_resolves_to_this_project():
    assert Path(rsa.__file__).resolve().parent == ROOT / "rsa"
    assert rsa.DISTRIBUTION == "rsa-rl"
    assert md.version("rsa-rl") == rsa.__version__
    assert not hasattr(rsa, "newkeys")  # python-rsa's API is absent


def _requirement_names(dist: str, seen: set[str]) -> None:
    name = re.sub(r"[-_.]+", "-", dist).lower()
    if name in seen:
        return
    seen.add(name)
    try:
        requires = md.requires(dist) or []
    except md.PackageNotFoundError:
        return
    for req in requires:
        if "extra ==" in req:
            continue  # optional extras of dependencies are not installed with them
        _requirement_names(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0], seen)


def test_no_dependency_requires_python_rsa():
    seen: set[str] = set()
    for req in md.requires("rsa-rl") or []:
        _requirement_names(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0], seen)
    assert "trl" in seen and "math-verify" in seen  # the walk did reach the dependency tree
    assert "rsa" not in seen, "a dependency pulls in python-rsa, whose import name clashes with ours"
    pins = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    assert not [p for p in pins if p.lower().startswith("rsa==")]


# ----- the built wheel, installed outside the checkout ---------------------------------------------------------
_INSPECT = """
import importlib.metadata as md, json, sys
import rsa
from rsa.toyworld import recipe_path
with recipe_path() as recipe:
    recipe = str(recipe)
print(json.dumps({
    "rsa": rsa.__file__,
    "dist_file": str(md.distribution("rsa-rl").locate_file("rsa/__init__.py")),
    "version": md.version("rsa-rl"),
    "finders": [c.__module__ + "." + c.__qualname__ for c in (f if isinstance(f, type) else type(f) for f in sys.meta_path)],
    "path": sys.path,
    "recipe": recipe,
}))
"""


def _run(argv: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it into a fresh venv that sees only the third-party packages, run `rsa` there."""
    # 1. the wheel, built from a copy of the sources (the checkout stays free of build/ and *.egg-info)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rsa", src / "rsa", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          str(src), "-w", tmp_path / "dist"], tmp_path, dict(os.environ))  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("rsa_rl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rsa/resources/recipes/toy_grpo.yaml" in names and "rsa/toyworld/pipeline.py" in names

    # 2. a fresh venv; the already installed dependencies are reached through a .pth line naming their
    # site-packages directory. Such a directory is not a site dir, so its own .pth files (the shared venv's
    # editable install of this checkout) are not processed.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, dict(os.environ))
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     env).stdout.strip())  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_shared_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         tmp_path, env)  # fmt: skip

    # 3. from a folder outside the checkout: `import rsa` is the wheel's, not the checkout's nor its editable finder
    work = tmp_path / "work"
    work.mkdir()
    assert not work.resolve().is_relative_to(ROOT)
    seen = json.loads(_run([python, "-c", _INSPECT], work, env).stdout)
    assert Path(seen["rsa"]).resolve() == (site / "rsa" / "__init__.py").resolve()
    assert Path(seen["dist_file"]).resolve() == Path(seen["rsa"]).resolve() and seen["version"] == rsa.__version__
    assert not [f for f in seen["finders"] if "editable" in f.lower()], seen["finders"]
    assert not [p for p in seen["path"] if p and Path(p).resolve().is_relative_to(ROOT)], seen["path"]
    assert Path(seen["recipe"]).resolve().is_relative_to(site.resolve())

    rsa_bin = venv / "bin" / "rsa"
    assert "--quick" in _run([rsa_bin, "demo", "--quick", "--help"], work, env).stdout
    assert "--max_completion_length" in _run([rsa_bin, "train", "--help"], work, env).stdout
    _run([rsa_bin, "tiny-model", "--out", "tiny"], work, env)
    _run([rsa_bin, "eval", "--engine", "hf", "--model", "tiny", "--dataset", "rg:basic_arithmetic", "--limit", "2",
          "--population", "2", "--k", "2", "--steps", "2", "--max-new-tokens", "16", "--out", "run", "--no-progress"],
         work, env)  # fmt: skip
    steps = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["command"][0] == str(rsa_bin) and manifest["problems"]["count"] == 2
