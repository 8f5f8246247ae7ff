"""rsa.stats: spreads and paired bootstrap comparisons behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest

from rsa.stats import paired_bootstrap, sign_flip_p, spread


def test_spread():
    s = spread([0.2, 0.4, 0.6])
    assert s.mean == pytest.approx(0.4) and s.std == pytest.approx(0.2) and (s.low, s.high, s.n) == (0.2, 0.6, 3)
    assert spread([0.5]).std == 0.0 and str(spread([0.5])) == "0.500"
    with pytest.raises(ValueError):
        spread([])


def test_paired_bootstrap_finds_a_real_shift_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = rng.binomial(1, 0.4, size=(3, 200)).astype(float)
    better = np.clip(a + rng.binomial(1, 0.25, size=a.shape), 0, 1)
    shifted = paired_bootstrap(a, better, resamples=500)
    assert shifted.difference == pytest.approx(better.mean() - a.mean())
    assert shifted.low > 0 and shifted.verdict == "better" and shifted.share_not_better < 0.01
    assert paired_bootstrap(better, a, resamples=500).verdict == "worse"
    same = paired_bootstrap(a, rng.permutation(a, axis=1), resamples=500)
    assert same.low < 0 < same.high and same.verdict == "unclear"


def test_paired_bootstrap_checks_shapes():
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(ValueError, match="pair_runs"):
        paired_bootstrap(np.zeros((2, 5)), np.zeros((3, 5)))
    assert paired_bootstrap(np.zeros((2, 5)), np.ones((3, 5)), pair_runs=False).difference == 1.0


def test_sign_flip_p():
    assert sign_flip_p([1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 16)
    assert sign_flip_p([1.0, -1.0]) == 1.0
