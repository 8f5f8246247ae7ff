"""Recursive self-aggregation (RSA) over a generation engine, as the paper describes it.

Parameters: population size N, aggregation-set size K, steps T.

* Step 1: for every problem, sample N independent answers to the task's plain prompt.
* Step t > 1: for each of the N slots, draw an aggregation set of K members of the previous population,
  uniformly at random and without replacement within the set (sets are drawn independently of each
  other). The question plus the K candidate solutions go into the task's aggregation prompt and the
  model writes one improved solution. The N new solutions replace the previous population: no elitism,
  no selection, no verifier. K = 1 is self-refinement and uses the task's refinement wording.
* End: the answer is a uniformly random member of the last population (the paper's Pass@1), or the
  majority-vote answer.

Each request gets its own sampling seed, derived from (run seed, step, problem index, slot), and aggregation
sets are drawn from a numpy Generator seeded from (run seed, step, problem index) (`rsa.seeds`). A problem's
step t+1 depends only on its own step t, so when requests run (`rsa.schedule`: the async and barrier
schedules, failure counting, reuse of what an interrupted run stored) never changes what they return on
engines that honour per-request seeds. A request that still fails inside the engine becomes a failed
member: empty text, score 0, its error text kept (naming step, problem and slot); the run goes on.

Candidates that would overflow the context (`engine.max_model_len - max_new_tokens` tokens for the
prompt) are shortened (`rsa.prompts.PromptBuilder`), each to an equal share of what the question leaves free,
keeping their beginning and end around a visible truncation marker; a candidate is never dropped and the
question is never cut (if the question itself does not fit, `ContextBudgetError` is raised before anything
is generated).

Budget-matched baselines (`LoopConfig.method`, one `rsa.methods.Method` each), all spending N * T
generations per problem:

* ``rsa``        the algorithm above.
* ``sample``     T independent rounds of N plain samples; step t's population is round t alone.
* ``majority``   the same samples, but step t's population is the pool of all N * t samples so far,
                 so the last step is a majority vote over N * T samples.
* ``refine``     N independent self-refinement chains: slot i refines its own previous answer (K = 1).
* ``single-agg`` a single aggregation step (T = 2 in effect): step 1 samples a pool of N * (T - 1)
                 answers, step 2 writes N aggregations of K candidates drawn from that pool.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from rsa.engines.base import Engine, Generation, SamplingParams
from rsa.methods import METHOD_TABLE, METHODS, Method
from rsa.prompts import PromptBuilder
from rsa.schedule import (
    MAX_FAILURES_IN_A_ROW,
    SCHEDULES,
    EngineCalls,
    Groups,
    ProgressHook,
    effective_schedule,
    run_batched,
    run_schedule,
)
from rsa.seeds import draw_aggregation_sets, request_seed, subset_rng
from rsa.tasks import Conversation, Problem, Task, get_task

logger = logging.getLogger(__name__)

FINAL_RULES = ("random", "majority")
#: the early-stopping share that `--stop_agreement` without a value means: unanimous
DEFAULT_STOP_AGREEMENT = 1.0
THINKING_MODES = ("strip", "keep")


@dataclass(frozen=True)
class LoopConfig:
    """What to run: method, population N, aggregation-set size K, steps T, seed and sampling settings."""

    method: str = "rsa"
    population: int = 16
    k: int = 4
    steps: int = 10
    seed: int = 1234
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192
    final: str = "random"  # how the final answer is chosen: a random member or the majority vote
    thinking: str = "strip"  # whether a thinking model's reasoning goes into aggregation prompts
    schedule: str = "async"  # async: problems advance independently; barrier: one step at a time
    #: early stopping: a problem stops evolving once this share of its members holds the majority answer
    stop_agreement: float | None = None
    islands: int = 1  # M sub-populations that draw aggregation sets among themselves (1: plain RSA)
    migrate_every: int = 1  # every this many steps, one member of each island moves to the next island

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.population < 1:
            raise ValueError(f"population N must be >= 1, got {self.population}")
        if self.steps < 1:
            raise ValueError(f"steps T must be >= 1 (step 1 is the initial sampling), got {self.steps}")
        if self.k < 1:
            raise ValueError(f"aggregation-set size K must be >= 1, got {self.k}")
        if self.spec.single_aggregation and self.steps < 2:
            raise ValueError(f"method {self.method} needs steps T >= 2 (its budget is N * T generations)")
        if self.spec.parents == "drawn":
            pool = min(self.generations_at(t) for t in range(1, max(2, self.num_steps)))
            if self.k > pool:
                drawn_from = (
                    f"the population N={pool}"
                    if pool == self.population
                    else f"{self.method}'s candidate pool of {pool}"
                )
                raise ValueError(
                    f"K={self.k} is larger than {drawn_from}: an aggregation set draws K distinct members, "
                    f"so use K <= {pool}"
                )
        if self.final not in FINAL_RULES:
            raise ValueError(f"unknown final-answer rule {self.final!r}; choose one of {', '.join(FINAL_RULES)}")
        if self.thinking not in THINKING_MODES:
            raise ValueError(f"unknown thinking mode {self.thinking!r}; choose one of {', '.join(THINKING_MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        self._check_compute_options()

    def _check_compute_options(self) -> None:
        """Early stopping and islands: ValueError naming the option for a bad value or combination."""
        if self.stop_agreement is not None:
            share = self.stop_agreement
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise ValueError(
                    f"stop_agreement must be a share in (0, 1] (e.g. 0.75: stop once 3/4 of the members agree), "
                    f"got {self.stop_agreement!r}"
                )
            if self.spec.parents != "drawn" or self.spec.single_aggregation:
                raise ValueError(f"stop_agreement applies to method rsa, not {self.method}")
        if self.islands < 1:
            raise ValueError(f"islands M must be >= 1, got {self.islands}")
        if self.migrate_every < 1:
            raise ValueError(f"migrate_every must be >= 1 step, got {self.migrate_every}")
        if self.islands > 1:
            if self.spec.parents != "drawn" or self.spec.single_aggregation:
                raise ValueError(f"islands apply to method rsa, not {self.method}")
            if self.population % self.islands:
                raise ValueError(
                    f"islands M={self.islands} must divide the population N={self.population} (equal islands)"
                )
            if self.k > self.population // self.islands:
                raise ValueError(
                    f"K={self.k} is larger than an island ({self.population // self.islands} members with "
                    f"N={self.population}, M={self.islands}): use K <= N / M"
                )

    @property
    def spec(self) -> Method:
        """The `rsa.methods.Method` that `method` names."""
        return METHOD_TABLE[self.method]

    @property
    def num_steps(self) -> int:
        """Steps actually run: T, except single-agg which always has 2 (pool, then one aggregation)."""
        return self.spec.num_steps(self.steps)

    @property
    def aggregation_size(self) -> int:
        """Candidates per aggregation prompt: K, or 1 for self-refinement."""
        return self.spec.aggregation_size(self.k)

    def generations_at(self, step: int) -> int:
        """How many answers step `step` generates per problem."""
        return self.spec.generations_at(step, self.population, self.steps)

    @property
    def budget_per_problem(self) -> int:
        """Total generations per problem over the whole run (N * T for every method)."""
        return sum(self.generations_at(t) for t in range(1, self.num_steps + 1))

    def to_dict(self) -> dict:
        """The configuration as a plain JSON-ready dict (the compute-aware options only when set)."""
        return without_compute_defaults(asdict(self))


#: options of compute-aware RSA and the values that make it plain RSA
COMPUTE_DEFAULTS = {"stop_agreement": None, "islands": 1, "migrate_every": 1}


def without_compute_defaults(values: dict) -> dict:
    """`values` without the compute-aware options that are at their plain-RSA value (`COMPUTE_DEFAULTS`), so that
    plain RSA's records and manifests stay as they were and its old runs resume."""
    return {k: v for k, v in values.items() if k not in COMPUTE_DEFAULTS or v != COMPUTE_DEFAULTS[k]}


@dataclass
class Member:
    """One answer in a population: what was generated, how it scored, and which members it aggregated."""

    text: str
    num_tokens: int
    extracted: str | None
    score: float
    parents: tuple[int, ...] = ()  # indices into the previous population (empty for a plain sample)
    finish_reason: str = "stop"
    reasoning: str | None = None
    truncated_parents: int = 0  # how many of the parents had to be shortened to fit the context
    seed: int | None = None
    error: str | None = None  # set when the request failed: the member is empty and scores 0
    #: tokens of its text as a candidate, counted by `PromptBuilder` the first time it is one (not in records)
    candidate_tokens: int | None = field(default=None, repr=False, compare=False)
    #: tokens of the prompt it was generated from, as the engine reported them (not in records)
    prompt_tokens: int | None = field(default=None, repr=False, compare=False)
    prompt: Conversation | None = field(default=None, repr=False, compare=False)  # the request's messages
    #: early stopping: the step whose member this is, when the problem had stopped and carries it on
    carried_from: int | None = None

    @property
    def failed(self) -> bool:
        """Whether the request behind this member failed."""
        return self.error is not None


Population = list[Member]  # one problem's population at one step


@dataclass
class StepResult:
    """The outcome of one step: each problem's new members, plus cost figures."""

    step: int
    generated: list[Population]  # per problem, the members generated at this step
    tokens_generated: int
    wall_time_s: float
    truncated_candidates: int


# ----- the loop -----------------------------------------------------------------------------------------------
@dataclass
class _Request:
    problem_index: int
    step: int
    slot: int
    conversation: Conversation
    parents: tuple[int, ...]
    truncated: int
    seed: int


@dataclass
class GroupResult:
    """One problem's population at one step, as the scheduler finished it."""

    step: int
    problem_index: int
    members: Population
    regenerated: int  # members generated in this call (the others were reused from stored records)
    tokens_generated: int  # tokens of the members generated in this call
    started: float  # time.monotonic() when its first request was sent
    finished: float  # time.monotonic() when its last request came back


class RSALoop:
    """RSA (and its baselines) for a list of problems on one engine, under the configured schedule."""

    def __init__(self, engine: Engine, problems: Sequence[Problem], config: LoopConfig) -> None:
        if not problems:
            raise ValueError("no problems to run")
        self.engine = engine
        self.problems = list(problems)
        self.config = config
        self.tasks = [get_task(p.task) for p in self.problems]
        self.prompts = PromptBuilder(engine, config.max_new_tokens, config.thinking)
        self.params = SamplingParams(
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )
        self.calls = EngineCalls(engine, self.params, self.describe_failure, len(self.problems))
        self._context_checked = False  # execute checks unless the caller already did (rsa.evaluate does, earlier)

    @property
    def schedule(self) -> str:
        """The schedule that actually runs: async needs an engine with an async path."""
        return effective_schedule(self.engine, self.config.schedule)

    def check_context(self) -> None:
        """Raise ContextBudgetError before generating when some question cannot fit its prompts (checked once)."""
        if self._context_checked:
            return
        aggregates = self.config.spec.aggregates and self.config.num_steps > 1
        for task, problem in zip(self.tasks, self.problems):
            self.prompts.check_fits(task, problem, None)
            if aggregates:
                self.prompts.check_fits(task, problem, self.config.aggregation_size)
        self._context_checked = True

    # ----- requests -------------------------------------------------------------------------------------------
    def aggregation_sets(self, step: int, problem_index: int, previous: Population | None) -> list[tuple[int, ...]]:
        """Each slot's parents at `step` in `previous` (empty for a plain sample), from the seeded subset generator."""
        cfg = self.config
        size = cfg.generations_at(step)
        if step == 1 or not cfg.spec.aggregates:
            return [()] * size
        if previous is None:
            raise ValueError(f"step {step} needs the previous step's populations")
        if cfg.spec.parents == "own":
            return [(slot,) for slot in range(size)]  # each chain refines its own answer
        rng = subset_rng(cfg.seed, step, problem_index)
        # island m's slots aggregate members of its pool; one island (M = 1) is the whole population in order,
        # so its single draw is plain RSA's
        sets = []
        pools = island_pools(len(previous), cfg.islands, migrating=(step - 1) % cfg.migrate_every == 0)
        for pool in pools:
            drawn = draw_aggregation_sets(rng, len(pool), size // len(pools), cfg.k)
            sets.extend(tuple(pool[i] for i in row) for row in drawn)
        return sets

    def carried(self, step: int, problem_index: int, previous: Population | None) -> Population | None:
        """Early stopping: `previous` carried on to `step` when its problem has converged, else None.

        A problem has converged when at least `stop_agreement` of its members give the majority answer (by the
        task's equivalence). The rule reads only the population, so a resumed run, and either schedule, stops
        the same problems at the same steps.
        """
        share = self.config.stop_agreement
        if share is None or step == 1 or previous is None:
            return None
        if agreement(self.tasks[problem_index], self.problems[problem_index], previous) < share:
            return None
        return [m if m.carried_from is not None else replace(m, carried_from=step - 1) for m in previous]

    def build_request(
        self, step: int, problem_index: int, slot: int, parents: tuple[int, ...], previous: Population | None
    ) -> _Request:
        """The request of one slot: its prompt (plain, or aggregating `parents` of `previous`) and seed."""
        task, problem = self.tasks[problem_index], self.problems[problem_index]
        if parents:
            conversation, truncated = self.prompts.aggregation(task, problem, [previous[i] for i in parents])
        else:
            conversation, truncated = self.prompts.plain(task, problem), 0
        seed = request_seed(self.config.seed, step, problem_index, slot)
        return _Request(problem_index, step, slot, conversation, parents, truncated, seed)

    def requests(self, step: int, previous: Sequence[Population] | None) -> list[_Request]:
        """The step's requests for every problem and slot, in (problem, slot) order."""
        out = []
        for pi in range(len(self.problems)):
            population = previous[pi] if previous is not None else None
            sets = self.aggregation_sets(step, pi, population)
            out.extend(self.build_request(step, pi, slot, parents, population) for slot, parents in enumerate(sets))
        return out

    def member(self, request: _Request, outcome: Generation | str) -> Member:
        """The scored member of a finished request; a string outcome is the error of a failed request."""
        if isinstance(outcome, str):
            return Member(
                text="",
                num_tokens=0,
                extracted=None,
                score=0.0,
                parents=request.parents,
                finish_reason="error",
                truncated_parents=request.truncated,
                seed=request.seed,
                error=outcome,
                prompt=request.conversation,
            )
        task, problem = self.tasks[request.problem_index], self.problems[request.problem_index]
        extracted = task.extract(outcome.text)
        return Member(
            text=outcome.text,
            num_tokens=outcome.num_tokens,
            extracted=extracted,
            score=float(task.score_extracted(extracted, problem)),
            parents=request.parents,
            finish_reason=outcome.finish_reason,
            reasoning=outcome.reasoning,
            truncated_parents=request.truncated,
            seed=request.seed,
            prompt_tokens=outcome.prompt_tokens,
            prompt=request.conversation,
        )

    def describe_failure(self, request: _Request, exc: BaseException) -> str:
        """The error text of a failed request, naming its step, problem and slot."""
        problem = self.problems[request.problem_index]
        return (
            f"step {request.step}, problem {problem.id!r} (index {request.problem_index}), slot {request.slot}: {exc}"
        )

    # ----- whole runs (when requests run is `rsa.schedule`'s) -------------------------------------------------
    def execute(
        self,
        on_group: Callable[[GroupResult], None],
        *,
        start_step: int = 1,
        previous: Sequence[Population | None] | None = None,
        stored: dict[tuple[int, int], Population] | None = None,
        progress: ProgressHook | None = None,
    ) -> None:
        """Run steps `start_step`..T under the configured schedule, calling `on_group` per finished (problem, step).

        `previous`: each problem's population at `start_step - 1` (None at step 1). `stored`: members of
        (step, problem index) kept from an earlier, interrupted run, reused where still valid.
        """
        self.check_context()
        previous = list(previous) if previous is not None else [None] * len(self.problems)
        if len(previous) != len(self.problems):
            raise ValueError(f"{len(previous)} previous populations for {len(self.problems)} problems")

        def report(step, problem_index, population, regenerated, tokens, started, finished) -> None:
            on_group(GroupResult(step, problem_index, population, regenerated, tokens, started, finished))

        first = len(self.problems) * self.config.generations_at(start_step)
        self.calls.failures.reset(min(MAX_FAILURES_IN_A_ROW, first))
        groups = Groups(self, previous, stored or {}, report)
        steps = range(start_step, self.config.num_steps + 1)
        run_schedule(groups, self.calls, steps, self.config.schedule, progress)

    def run_step(self, step: int, previous: Sequence[Population] | None) -> StepResult:
        """Generate and score step `step` for every problem in one batched engine call (None at step 1)."""
        start = time.perf_counter()
        generated: list[Population] = [[] for _ in self.problems]

        def report(step, problem_index, population, *_) -> None:
            generated[problem_index] = population

        prior = list(previous) if previous is not None else [None] * len(self.problems)
        run_batched(Groups(self, prior, {}, report), self.calls, [step], None)
        return StepResult(
            step=step,
            generated=generated,
            tokens_generated=sum(m.num_tokens for p in generated for m in p),
            wall_time_s=time.perf_counter() - start,
            truncated_candidates=sum(m.truncated_parents for p in generated for m in p),
        )

    def run(self, previous: Sequence[Population] | None = None, start_step: int = 1) -> Iterator[StepResult]:
        """Yield steps `start_step`..T one batched step at a time; `previous` is step `start_step - 1`'s populations."""
        if start_step > 1 and previous is None:
            raise ValueError(f"resuming at step {start_step} needs step {start_step - 1}'s populations")
        self.check_context()
        for step in range(start_step, self.config.num_steps + 1):
            result = self.run_step(step, previous)
            previous = result.generated
            yield result


def evaluated_population(method: str, history: Sequence[Sequence[Population]]) -> list[Population]:
    """What the metrics of the latest step in `history` look at, per problem.

    The latest population, except for a pooled method (`majority`), whose step t is the pool of all samples so far.
    """
    if METHOD_TABLE[method].pooled:
        return [[m for step in history for m in step[pi]] for pi in range(len(history[-1]))]
    return list(history[-1])


def final_answers(problems: Sequence[Problem], population: Sequence[Population], rule: str, seed: int) -> list[dict]:
    """The final answer per problem: a uniformly random member (seeded) or the majority-vote answer."""
    from rsa.voting import majority_answer

    answers = []
    for pi, (problem, members) in enumerate(zip(problems, population)):
        task = get_task(problem.task)
        if rule == "random":
            index = int(np.random.default_rng([seed % 2**63, 0, pi]).integers(len(members)))
            answer, score = members[index].extracted, members[index].score
        else:
            cluster = majority_answer(task, [m.extracted for m in members], problem)
            index = cluster.members[0] if cluster else None
            answer = cluster.answer if cluster else None
            score = members[index].score if cluster else 0.0
        answers.append({"problem_id": problem.id, "rule": rule, "member": index, "answer": answer, "score": score})
    return answers


def agreement(task: Task, problem: Problem, population: Sequence[Member]) -> float:
    """The share of `population` in its largest answer cluster (0.0 when no member has an answer)."""
    from rsa.voting import majority_answer

    cluster = majority_answer(task, [m.extracted for m in population], problem)
    return len(cluster.members) / len(population) if cluster and population else 0.0


def island_pools(population: int, islands: int, *, migrating: bool) -> list[list[int]]:
    """Per island, the previous population's slots it aggregates from.

    Island m holds slots [m*S, (m+1)*S), S = N / M. At a migration step the first member of each island moves
    to the next island (island m's first place goes to island m-1's first member), so islands exchange one
    member each. With M = 1 the single pool is 0..N-1 in order, which makes the draws plain RSA's.
    """
    size = population // islands
    pools = [list(range(m * size, (m + 1) * size)) for m in range(islands)]
    if migrating and islands > 1:
        firsts = [pool[0] for pool in pools]
        for m, pool in enumerate(pools):
            pool[0] = firsts[m - 1]
    return pools
