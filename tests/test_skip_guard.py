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


def test_a_skip_is_allowed_off_ci(tmp_path):
    proc = _run(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout and "SKIPPED ON CI" not in proc.stdout
