"""Packaging: `import rsa` is this project, not python-rsa, and no dependency needs python-rsa."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

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
