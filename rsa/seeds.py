"""Request seeds, K, and aggregation-set sampling: the randomness RSA evaluation, augment and on-policy training share.

Seeds and sets depend only on a run seed and coordinates, never on what ran before, so a resumed run draws
exactly what the uninterrupted run drew. Imports nothing from `rsa`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from itertools import combinations

import numpy as np

_SEED_MODULUS = 2**31 - 1  # request seeds fit a signed 32-bit int, which every backend accepts


def request_seed(run_seed: int, step: int, problem_index: int, slot: int) -> int:
    """The sampling seed of one request: a fixed hash of (run seed, step, problem index, slot)."""
    digest = hashlib.blake2b(f"{run_seed}/{step}/{problem_index}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_MODULUS


def subset_rng(run_seed: int, step: int, problem_index: int) -> np.random.Generator:
    """The Generator that draws one problem's aggregation sets at one step."""
    return np.random.default_rng([run_seed % 2**63, step, problem_index])


@dataclass(frozen=True)
class KRange:
    """Candidates per aggregation prompt: fixed (`low == high`) or drawn uniformly from `low..high`."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise ValueError(f"K range {self.low}-{self.high} is invalid: need 1 <= low <= high")

    @classmethod
    def parse(cls, value: int | str | KRange, *, minimum: int = 1, option: str = "K") -> KRange:
        """A KRange from 4, "4" or "2-4"; ValueError naming `option` and the value when malformed or below `minimum`."""
        if isinstance(value, KRange):
            low, high = value.low, value.high
        elif isinstance(value, int):
            low = high = value
        else:
            match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", str(value).strip())
            if not match:
                raise ValueError(f"{option} {value!r}: expected a number like 4 or a range like 2-4")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) else low
        if low < minimum or high < low:
            raise ValueError(f"{option} {value!r}: K must be >= {minimum} (and low <= high)")
        return cls(low, high)

    def pick(self, unit: float) -> int:
        """The K that `unit`, uniform in [0, 1), selects: every K of the range equally likely."""
        return self.low + int(unit * (self.high - self.low + 1))

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


def draw_aggregation_sets(
    rng: np.random.Generator, population_size: int, num_sets: int, k: int | KRange, *, distinct: bool = False
) -> list[tuple[int, ...]]:
    """`num_sets` aggregation sets, each K distinct members of a population, in random order within the set.

    Default (RSA's rule, sets independent of each other): for a fixed K, one matrix of i.i.d. uniforms, each
    row sorted into a uniformly random permutation whose first K entries are a uniformly random K-subset;
    for a K range, each set first draws its K uniformly. `distinct=True` (dataset building): up to
    `num_sets` sets that differ as sets (K uniform in the range per set); when no more than `num_sets`
    distinct sets exist, all are returned in random order (only sizes the population holds), so fewer than
    asked means there are no more.
    """
    k = KRange.parse(k)
    if not distinct:
        if k.high > population_size:
            raise ValueError(f"cannot draw {k.high} distinct members from a population of {population_size}")
        orders = np.argsort(rng.random((num_sets, population_size)), axis=1)
        if k.low == k.high:
            return [tuple(row) for row in orders[:, : k.low].tolist()]
        sizes = rng.integers(k.low, k.high + 1, num_sets).tolist()
        return [tuple(order[:size]) for order, size in zip(orders.tolist(), sizes)]
    sizes = range(k.low, k.high + 1)
    if sum(math.comb(population_size, s) for s in sizes) <= num_sets:
        every = [c for s in sizes for c in combinations(range(population_size), s)]
        order = rng.permutation(len(every))
        return [tuple(int(x) for x in rng.permutation(every[i])) for i in order]
    found: dict[frozenset, tuple[int, ...]] = {}
    for _ in range(num_sets * 20):
        size = int(rng.integers(k.low, k.high + 1))
        members = tuple(int(x) for x in rng.permutation(population_size)[:size])
        found.setdefault(frozenset(members), members)
        if len(found) == num_sets:
            break
    return list(found.values())
