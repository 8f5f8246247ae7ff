"""Small statistics for multi-seed comparisons: mean and spread, and paired bootstrap intervals.

A comparison is between two conditions measured on the same problems, each under several runs (training
seeds x RSA seeds). Values are arrays of shape (runs, problems); run i of one condition is paired with run i of
the other (the same RSA seed; training seeds of different arms are independent, so the pairing of runs only
matters for resampling). The bootstrap resamples runs and problems jointly, so that the interval covers both
seed-to-seed and problem-to-problem variation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation, minimum and maximum of a few per-run values."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} ± {self.std:.3f}"


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample std (0 for one value), min and max of `values`; ValueError when empty."""
    data = np.asarray(list(values), dtype=float)
    if data.size == 0:
        raise ValueError("spread of no values")
    std = float(data.std(ddof=1)) if data.size > 1 else 0.0
    return Spread(float(data.mean()), std, float(data.min()), float(data.max()), int(data.size))


@dataclass(frozen=True)
class Comparison:
    """B - A: the observed mean difference, its bootstrap interval, and the bootstrap share of B - A <= 0."""

    difference: float
    low: float
    high: float
    share_not_better: float
    level: float

    @property
    def verdict(self) -> str:
        """`better` when the interval lies above 0, `worse` below, otherwise `unclear`."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "unclear"

    def __str__(self) -> str:
        return f"{self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _as_matrix(values, name: str) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.ndim == 1:
        data = data[None, :]
    if data.ndim != 2 or data.size == 0:
        raise ValueError(f"{name}: expected a (runs, problems) array, got shape {data.shape}")
    return data


def paired_bootstrap(
    a, b, resamples: int = 2000, level: float = 0.95, seed: int = 0, pair_runs: bool = True
) -> Comparison:
    """Compare condition `b` with `a`, both (runs, problems) arrays over the same problems in the same order.

    The statistic is mean(b) - mean(a). Each resample draws problems with replacement (shared by a and b), and
    runs with replacement: one draw shared by a and b when `pair_runs` (same run count), else one per side.
    """
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} problems and b {b.shape[1]}: compare on the same problems")
    if pair_runs and a.shape[0] != b.shape[0]:
        raise ValueError(f"pair_runs needs as many runs in a ({a.shape[0]}) as in b ({b.shape[0]})")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    problems = a.shape[1]
    diffs = np.empty(resamples)
    for r in range(resamples):
        cols = rng.integers(0, problems, problems)
        rows_a = rng.integers(0, a.shape[0], a.shape[0])
        rows_b = rows_a if pair_runs else rng.integers(0, b.shape[0], b.shape[0])
        diffs[r] = b[np.ix_(rows_b, cols)].mean() - a[np.ix_(rows_a, cols)].mean()
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    observed = float(b.mean() - a.mean())
    return Comparison(observed, float(low), float(high), float(np.mean(diffs <= 0)), level)


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip p-value of a mean difference over a few paired values (<= 16)."""
    data = np.asarray(list(differences), dtype=float)
    if data.size == 0 or data.size > 16:
        raise ValueError(f"sign_flip_p takes 1 to 16 paired differences, got {data.size}")
    observed = abs(data.mean())
    count = 0
    for mask in range(2**data.size):
        signs = np.array([1 if mask >> i & 1 else -1 for i in range(data.size)])
        count += abs((signs * data).mean()) >= observed - 1e-12
    return count / 2**data.size


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell (`-` for None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
