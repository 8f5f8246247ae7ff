"""RSA and its budget-matched baselines as a table: one `Method` per `rsa eval --method` value.

Every method spends N x T generations per problem. What tells them apart is where a slot's parents come from
at a step t > 1, whether the metrics of step t pool every step so far, and whether step 1 samples the budget
of T - 1 steps as one pool for a single aggregation step. Adding a baseline is adding one entry to `METHOD_TABLE`;
the loop (`rsa.loop`) reads only these fields. Imports nothing from `rsa`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: where a slot's parents come from at a step t > 1
PARENT_RULES = ("none", "own", "drawn")


@dataclass(frozen=True)
class Method:
    """How one method runs (see the module docstring).

    `parents`: at a step t > 1, "none" (a fresh plain sample), "own" (the slot's own member of step t-1: a
    self-refinement chain, K = 1) or "drawn" (an aggregation set of K members drawn from step t-1).
    `pooled`: the metrics of step t are over the members of steps 1..t together. `single_aggregation`:
    step 1 samples a pool of N x (T - 1), step 2 aggregates from it once, and the run has 2 steps.
    """

    name: str
    parents: str
    pooled: bool = False
    single_aggregation: bool = False

    def __post_init__(self) -> None:
        if self.parents not in PARENT_RULES:
            raise ValueError(f"method {self.name!r}: parents {self.parents!r} is not one of {', '.join(PARENT_RULES)}")

    @property
    def aggregates(self) -> bool:
        """Whether steps after the first write aggregation (or refinement) prompts."""
        return self.parents != "none"

    def num_steps(self, steps: int) -> int:
        """Steps actually run for T = `steps`."""
        return 2 if self.single_aggregation else steps

    def generations_at(self, step: int, population: int, steps: int) -> int:
        """Members generated per problem at `step` with N = `population` and T = `steps`."""
        if self.single_aggregation and step == 1:
            return population * (steps - 1)
        return population

    def aggregation_size(self, k: int) -> int:
        """Candidates per aggregation prompt: K, or 1 for a refinement chain."""
        return 1 if self.parents == "own" else k


METHOD_TABLE: dict[str, Method] = {
    m.name: m
    for m in (
        Method("rsa", parents="drawn"),
        Method("sample", parents="none"),
        Method("majority", parents="none", pooled=True),
        Method("refine", parents="own"),
        Method("single-agg", parents="drawn", single_aggregation=True),
    )
}
#: the method names, for configs and command-line choices
METHODS = tuple(METHOD_TABLE)
