"""Kill a real `rsa` command with SIGKILL at a chosen moment, for the resume-after-kill tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sigkill_rsa_when(
    argv: Sequence[str], ready: Callable[[], bool], timeout: float = 120.0, poll: float = 0.005
) -> None:
    """Run `python -m rsa.cli *argv` from the checkout (Hugging Face offline) and SIGKILL it once `ready()` holds.

    AssertionError, with the command's stderr, unless the command died of that SIGKILL (it ended first, or
    `ready` never held within `timeout` seconds).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rsa.cli", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(poll)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
