"""The shared randomness (`rsa.seeds`): one K type and one aggregation-set sampler for eval, augment and training;
and the method table (`rsa.methods`) that every budget-matched baseline is an entry of."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from rsa.loop import LoopConfig
from rsa.methods import METHOD_TABLE, METHODS
from rsa.seeds import KRange, draw_aggregation_sets


def test_k_range_parses_every_shape_with_the_callers_lower_bound():
    assert KRange.parse(4) == KRange.parse("4") == KRange.parse(KRange(4, 4)) == KRange(4, 4)
    assert KRange.parse(" 2 - 4 ") == KRange(2, 4) and str(KRange(2, 4)) == "2-4" and str(KRange(3, 3)) == "3"
    assert KRange.parse("1") == KRange(1, 1)  # augment and eval allow K = 1 (refinement wording)
    with pytest.raises(ValueError, match="on_policy_k '1': K must be >= 2"):
        KRange.parse("1", minimum=2, option="on_policy_k")  # on-policy and co-trained aggregation need two
    for bad in ("x", "4-2", "-3", "", 0):
        with pytest.raises(ValueError, match="cotrained_k"):
            KRange.parse(bad, minimum=2, option="cotrained_k")


def test_k_range_pick_covers_the_range_evenly():
    k = KRange(2, 4)
    picks = Counter(k.pick(u) for u in np.linspace(0, 1, 3000, endpoint=False))
    assert sorted(picks) == [2, 3, 4] and max(picks.values()) - min(picks.values()) <= 1


def test_distinct_sets_differ_as_sets_and_are_all_returned_when_few():
    rng = np.random.default_rng(3)
    sets = draw_aggregation_sets(rng, 6, 10, KRange(2, 3), distinct=True)
    assert len(sets) == 10 and len({frozenset(s) for s in sets}) == 10
    assert all(2 <= len(s) <= 3 and len(set(s)) == len(s) and max(s) < 6 for s in sets)
    few = draw_aggregation_sets(np.random.default_rng(0), 4, 100, 2, distinct=True)
    assert sorted(tuple(sorted(s)) for s in few) == list(combinations(range(4), 2))  # all C(4,2) = 6 of them


def test_independent_sets_with_a_k_range_draw_k_per_set():
    sets = draw_aggregation_sets(np.random.default_rng(1), 5, 3000, KRange(1, 3))
    sizes = Counter(len(s) for s in sets)
    assert sorted(sizes) == [1, 2, 3] and min(sizes.values()) > 900
    assert all(len(set(s)) == len(s) for s in sets)


def test_every_method_in_the_table_is_budget_matched():
    assert tuple(METHOD_TABLE) == METHODS and "rsa" in METHODS
    for method in METHODS:
        config = LoopConfig(method=method, population=4, k=2, steps=5)
        assert config.budget_per_problem == 4 * 5, method
        assert config.spec is METHOD_TABLE[method]
    assert LoopConfig(method="refine", k=3, population=4).aggregation_size == 1
    assert LoopConfig(method="single-agg", steps=5).num_steps == 2
