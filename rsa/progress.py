"""Live progress of an evaluation: requests done, tokens per second, problems per step, ETA.

On a terminal it is one tqdm bar over the run's requests; its postfix shows tokens per second and how
many problems have finished each step (`s1 30/30 s2 12/30 ...`). Off a terminal, or with the bar
disabled (`rsa eval --no-progress`), it logs the same figures as one line every `log_every` seconds
instead (`log_every=None`: silent).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class Progress:
    """Counts finished requests and (problem, step) groups; shows them as a bar or as periodic log lines."""

    def __init__(
        self,
        total_requests: int,
        num_problems: int,
        num_steps: int,
        *,
        enabled: bool = True,
        log_every: float | None = 60.0,
        desc: str = "requests",
    ) -> None:
        self.total = total_requests
        self.num_problems = num_problems
        self.steps_done = [0] * (num_steps + 1)  # problems that finished each step (index 0 unused)
        self.requests = 0
        self.tokens = 0
        self.started = time.monotonic()
        self.log_every = log_every
        self._last_log = self.started
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total_requests, desc=desc, unit="req", dynamic_ncols=True, file=sys.stderr)

    def start_step(self, step: int, done: int) -> None:
        """Record that `done` problems had already finished `step` before this run started."""
        self.steps_done[step] = done

    def requests_done(self, count: int, tokens: int) -> None:
        """`count` requests finished, together generating `tokens` tokens."""
        self.requests += count
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(count)
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        self._maybe_log()

    def group_done(self, step: int) -> None:
        """One problem finished `step`."""
        self.steps_done[step] += 1
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        self._maybe_log()

    def tokens_per_second(self) -> float:
        """Tokens generated per second since the start."""
        return self.tokens / max(time.monotonic() - self.started, 1e-9)

    def _postfix(self) -> str:
        steps = " ".join(f"s{t} {n}/{self.num_problems}" for t, n in enumerate(self.steps_done) if t and n)
        return f"{self.tokens_per_second():.0f} tok/s | {steps}"

    def line(self) -> str:
        """The progress as one line of text."""
        elapsed = time.monotonic() - self.started
        rate = self.requests / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.requests) / rate if rate > 0 else float("inf")
        eta = "?" if remaining == float("inf") else _duration(remaining)
        return (
            f"requests {self.requests}/{self.total} ({100 * self.requests / max(self.total, 1):.0f}%), "
            f"{self._postfix()}, elapsed {_duration(elapsed)}, ETA {eta}"
        )

    def _maybe_log(self) -> None:
        if self.bar is not None or self.log_every is None:
            return
        now = time.monotonic()
        if now - self._last_log >= self.log_every:
            self._last_log = now
            logger.info("progress: %s", self.line())

    def close(self) -> None:
        """Close the bar (or log the last line)."""
        if self.bar is not None:
            self.bar.close()
        elif self.log_every is not None and self.requests:
            logger.info("progress: %s", self.line())


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
