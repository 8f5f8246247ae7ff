"""Experiment trackers for `rsa eval`: the same ones the training recipes report to.

`report_to` takes the names TRL/transformers use: "tensorboard" (the recipes' default; event files in
`<run dir>/tensorboard`, read with `tensorboard --logdir`), "wandb" (optional extra, `rsa-rl[wandb]`),
or "none". Each RSA step is one tracker step; every numeric field of the step's summary (pass_at_1,
pass_at_n, majority, lengths, tokens, ...) becomes a scalar under `rsa/`.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRACKERS = ("none", "tensorboard", "wandb")
#: the folder of a run directory that holds TensorBoard event files
TENSORBOARD_DIR = "tensorboard"


def check_report_to(report_to: Sequence[str] | str | None) -> list[str]:
    """The tracker names as a list ("none" dropped); ValueError naming an unknown or uninstalled tracker."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [n.strip().lower() for n in names if n and n.strip().lower() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"--report-to {name!r}: unknown tracker; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            extra = "pip install 'rsa-rl[wandb]'" if name == "wandb" else "pip install tensorboard"
            raise ValueError(f"--report-to {name}: the {name!r} package is not installed ({extra})")
    return names


def scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a step summary (booleans and the step number excluded)."""
    out = {}
    for key, value in summary.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class MetricsTracker:
    """Logs per-step RSA summaries to the chosen trackers; a no-op for `report_to=[]`."""

    def __init__(self, report_to: Sequence[str], run_dir: str | Path, run_name: str, config: Mapping[str, Any]):
        self.names = check_report_to(report_to)
        self.run_dir = Path(run_dir)
        self._writers: list[Any] = []
        self._wandb = None
        if "tensorboard" in self.names:
            folder = self.run_dir / TENSORBOARD_DIR
            # The folder belongs to the run and is rewritten from the committed summaries each time, so a
            # resumed run does not log its first steps twice.
            shutil.rmtree(folder, ignore_errors=True)
            self._writers.append(_tensorboard_writer(folder))
        if "wandb" in self.names:
            import wandb

            self._wandb = wandb.init(project="rsa-eval", name=run_name, config=dict(config), reinit=True)

    def log_step(self, summary: Mapping[str, Any]) -> None:
        """One RSA step's summary as scalars at tracker step `summary["step"]`."""
        step = int(summary["step"])
        values = scalars(summary)
        for writer in self._writers:
            for key, value in values.items():
                writer.add_scalar(f"rsa/{key}", value, step)
            writer.flush()
        if self._wandb is not None:
            self._wandb.log({f"rsa/{k}": v for k, v in values.items()}, step=step)

    def log_steps(self, summaries: Iterable[Mapping[str, Any]]) -> None:
        """`log_step` for each summary, in order."""
        for summary in summaries:
            self.log_step(summary)

    def close(self) -> None:
        """Flush and close every tracker."""
        for writer in self._writers:
            writer.close()
        self._writers = []
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _tensorboard_writer(folder: Path) -> Any:
    try:  # torch's writer is the one transformers' TensorBoardCallback uses
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(folder))
    except ImportError:  # an openai-engine install without torch
        from tensorboard.summary import Writer

        return Writer(str(folder))
