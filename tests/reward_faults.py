"""Fault injection for tests/test_completion_log.py: a reward function that fails on one process only."""

from __future__ import annotations

import os


def reward_fails_on_process_1(prompts=None, completions=None, **kwargs) -> list[float]:
    """0.0 per completion on every process but process 1, where it raises (an injected fault)."""
    if os.environ.get("RANK") == "1":
        raise ZeroDivisionError("injected reward fault on process 1")
    return [0.0] * len(completions)
