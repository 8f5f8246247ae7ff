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

Schedules (`LoopConfig.schedule`): each request gets its own sampling seed, derived from (run seed,
step, problem index, slot), and aggregation sets are drawn from a numpy Generator seeded from (run
seed, step, problem index). A problem's step t+1 depends only on its own step t, so the order in which
requests run does not change any result on engines that honour per-request seeds:

* ``async`` (default): every problem advances to its next step as soon as its own population is
  complete; requests go to the engine one by one through its async path (`Engine.agenerate_one`),
  which keeps it full up to its concurrency limit. Engines without an async path (hf) fall back to
  the barrier schedule, and the loop logs that it does.
* ``barrier``: one step at a time over all problems (one batched `engine.generate` call per step on
  engines without an async path).

A request that still fails inside the engine (`EngineError`, after the engine's own retries) becomes a
failed member: empty text, score 0, its error text kept (naming step, problem and slot); the run goes
on. A member is regenerated only when it is missing or failed, or when one of its parents was
regenerated successfully, so a resumed run retries exactly the failed requests and what depends on them.
When requests fail in a row (`MAX_FAILURES_IN_A_ROW`, or all of a smaller first step) with none
succeeding in between, the engine is taken to be down: the run stops with `EngineError` (resumable). A
poisoned problem (one whose every request fails while the engine serves the others) is not an outage, so the
streak must span at least two problems (unless the run has only one): such a problem left alone at the end of
an async run fails its members and the run completes (`--resume` retries them).

Candidates that would overflow the context (`engine.max_model_len - max_new_tokens` tokens for the
prompt) are shortened, each to an equal share of what the question leaves free, keeping their beginning
and end around a visible `TRUNCATION_MARKER`; a candidate is never dropped and the question is never cut
(if the question itself does not fit, `ContextBudgetError` is raised before anything is generated).

Budget-matched baselines (`LoopConfig.method`), all spending N * T generations per problem:

* ``rsa``        the algorithm above.
* ``sample``     T independent rounds of N plain samples; step t's population is round t alone.
* ``majority``   the same samples, but step t's population is the pool of all N * t samples so far,
                 so the last step is a majority vote over N * T samples.
* ``refine``     N independent self-refinement chains: slot i refines its own previous answer (K = 1).
* ``single-agg`` a single aggregation step (T = 2 in effect): step 1 samples a pool of N * (T - 1)
                 answers, step 2 writes N aggregations of K candidates drawn from that pool.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from rsa.engines.base import Engine, EngineError, Generation, SamplingParams
from rsa.fitting import TRUNCATION_MARKER, ContextBudgetError, PromptBuilder  # noqa: F401  (the first two re-exported)
from rsa.tasks import Conversation, Problem, get_task

logger = logging.getLogger(__name__)

METHODS = ("rsa", "sample", "majority", "refine", "single-agg")
FINAL_RULES = ("random", "majority")
THINKING_MODES = ("strip", "keep")
SCHEDULES = ("async", "barrier")

#: failed requests in a row, with no success in between, after which the engine is taken to be down
MAX_FAILURES_IN_A_ROW = 16
_SEED_MODULUS = 2**31 - 1  # request seeds fit a signed 32-bit int, which every backend accepts


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
        if self.method == "rsa" and self.k > self.population:
            raise ValueError(
                f"K={self.k} is larger than the population N={self.population}: an aggregation set draws K "
                "distinct members, so use K <= N"
            )
        if self.method == "single-agg":
            if self.steps < 2:
                raise ValueError("method single-agg needs steps T >= 2 (its budget is N * T generations)")
            if self.k > self.population * (self.steps - 1):
                raise ValueError(
                    f"K={self.k} is larger than single-agg's candidate pool N*(T-1)={self.population * (self.steps - 1)}"
                )
        if self.final not in FINAL_RULES:
            raise ValueError(f"unknown final-answer rule {self.final!r}; choose one of {', '.join(FINAL_RULES)}")
        if self.thinking not in THINKING_MODES:
            raise ValueError(f"unknown thinking mode {self.thinking!r}; choose one of {', '.join(THINKING_MODES)}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def num_steps(self) -> int:
        """Steps actually run: T, except single-agg which always has 2 (pool, then one aggregation)."""
        return 2 if self.method == "single-agg" else self.steps

    @property
    def aggregation_size(self) -> int:
        """Candidates per aggregation prompt: K, or 1 for self-refinement."""
        return 1 if self.method == "refine" else self.k

    def generations_at(self, step: int) -> int:
        """How many answers step `step` generates per problem."""
        if self.method == "single-agg" and step == 1:
            return self.population * (self.steps - 1)
        return self.population

    @property
    def budget_per_problem(self) -> int:
        """Total generations per problem over the whole run (N * T for every method)."""
        return sum(self.generations_at(t) for t in range(1, self.num_steps + 1))

    def to_dict(self) -> dict:
        """The configuration as a plain JSON-ready dict."""
        return asdict(self)


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
    prompt: Conversation | None = field(default=None, repr=False, compare=False)  # the request's messages
    _prompt_tokens: int | None = field(default=None, repr=False, compare=False)

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


# ----- seeds and aggregation sets -----------------------------------------------------------------------------
def request_seed(run_seed: int, step: int, problem_index: int, slot: int) -> int:
    """The sampling seed of one request: a fixed hash of (run seed, step, problem index, slot)."""
    digest = hashlib.blake2b(f"{run_seed}/{step}/{problem_index}/{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _SEED_MODULUS


def subset_rng(run_seed: int, step: int, problem_index: int) -> np.random.Generator:
    """The Generator that draws one problem's aggregation sets at one step."""
    return np.random.default_rng([run_seed % 2**63, step, problem_index])


def draw_aggregation_sets(rng: np.random.Generator, population_size: int, num_sets: int, k: int) -> np.ndarray:
    """`num_sets` independent aggregation sets, each K distinct members drawn uniformly; shape (num_sets, K).

    Sorting i.i.d. uniforms gives a uniformly random permutation per row; its first K entries are a
    uniformly random K-subset (in random order), drawn without replacement within the row.
    """
    if not 1 <= k <= population_size:
        raise ValueError(f"cannot draw {k} distinct members from a population of {population_size}")
    return np.argsort(rng.random((num_sets, population_size)), axis=1)[:, :k]


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


class ProgressHook(Protocol):
    """What the loop reports while it runs (see `rsa.progress.Progress`)."""

    def requests_done(self, count: int, tokens: int) -> None: ...

    def group_done(self, step: int) -> None: ...


class _PriorityGate:
    """At most `limit` requests in flight; waiting ones go in order of (step, arrival): lagging problems first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.waiting: list[tuple[int, int, asyncio.Future]] = []
        self.arrivals = 0

    async def acquire(self, step: int) -> None:
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return
        self.arrivals += 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (step, self.arrivals, future))
        await future  # the releaser counted us in

    def release(self) -> None:
        self.in_flight -= 1
        while self.waiting and self.in_flight < self.limit:
            _, _, future = heapq.heappop(self.waiting)
            if not future.done():
                self.in_flight += 1
                future.set_result(None)


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
        self._failures_in_a_row = 0
        self._failure_limit = MAX_FAILURES_IN_A_ROW
        self._streak_problems: set[int] = set()  # problems of the current run of failures

    @property
    def schedule(self) -> str:
        """The schedule that actually runs: async needs an engine with an async path."""
        if self.config.schedule == "async" and not getattr(self.engine, "supports_async", False):
            return "barrier"
        return self.config.schedule

    def check_context(self) -> None:
        """Raise ContextBudgetError before generating when some question cannot fit its prompts."""
        aggregates = self.config.method in ("rsa", "refine", "single-agg") and self.config.num_steps > 1
        for task, problem in zip(self.tasks, self.problems):
            self.prompts.check_fits(task, problem, None)
            if aggregates:
                self.prompts.check_fits(task, problem, self.config.aggregation_size)

    # ----- requests -------------------------------------------------------------------------------------------
    def aggregation_sets(self, step: int, problem_index: int, previous_size: int) -> list[tuple[int, ...]]:
        """Each slot's parents at `step` (empty for a plain sample), from the seeded subset generator."""
        cfg = self.config
        size = cfg.generations_at(step)
        if step == 1 or cfg.method in ("sample", "majority"):
            return [()] * size
        if cfg.method == "refine":
            return [(slot,) for slot in range(size)]  # each chain refines its own answer
        rng = subset_rng(cfg.seed, step, problem_index)
        return [tuple(row) for row in draw_aggregation_sets(rng, previous_size, size, cfg.k).tolist()]

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
            sets = self.aggregation_sets(step, pi, len(population) if population else 0)
            out.extend(self.build_request(step, pi, slot, parents, population) for slot, parents in enumerate(sets))
        return out

    def plan_group(
        self,
        step: int,
        problem_index: int,
        previous: Population | None,
        stored: Population | None = None,
        changed: Collection[int] = (),
    ) -> tuple[list[Member | None], list[_Request]]:
        """Which members of (problem, step) can be reused from `stored` and which requests must run.

        A stored member is reused unless it failed or one of its parents is in `changed` (the previous
        step's slots regenerated successfully in this run); the rest become requests.
        """
        if step > 1 and previous is None and self.config.method not in ("sample", "majority"):
            raise ValueError(f"step {step} needs the previous step's populations")
        sets = self.aggregation_sets(step, problem_index, len(previous) if previous else 0)
        members: list[Member | None] = [None] * len(sets)
        todo = []
        for slot, parents in enumerate(sets):
            old = stored[slot] if stored is not None and slot < len(stored) else None
            if old is not None and not old.failed and old.parents == parents and not set(parents) & set(changed):
                members[slot] = old
            else:
                todo.append(self.build_request(step, problem_index, slot, parents, previous))
        return members, todo

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
            prompt=request.conversation,
        )

    def describe_failure(self, request: _Request, exc: BaseException) -> str:
        """The error text of a failed request, naming its step, problem and slot."""
        problem = self.problems[request.problem_index]
        return (
            f"step {request.step}, problem {problem.id!r} (index {request.problem_index}), slot {request.slot}: {exc}"
        )

    def finish_group(
        self, step: int, problem_index: int, members: list[Member | None], todo: Sequence[_Request], outcomes: Sequence
    ) -> tuple[Population, set[int], int]:
        """Fill the generated members in; returns (population, slots regenerated successfully, their tokens)."""
        changed, tokens = set(), 0
        for request, outcome in zip(todo, outcomes):
            member = self.member(request, outcome)
            members[request.slot] = member
            tokens += member.num_tokens
            if member.failed:
                logger.warning("request failed: %s", member.error)
            else:
                changed.add(request.slot)
        return list(members), changed, tokens

    def _succeeded(self) -> None:
        self._failures_in_a_row = 0
        self._streak_problems.clear()

    def _count(self, outcome: Generation | str, request: _Request) -> Generation | str:
        """Track failures in a row; EngineError when the engine looks down (see the module docstring)."""
        if not isinstance(outcome, str):
            self._succeeded()
            return outcome
        self._failures_in_a_row += 1
        self._streak_problems.add(request.problem_index)
        # one problem failing alone is that problem's fault (a prompt the server rejects), not the engine's; with
        # a single problem in the run the two cannot be told apart, and stopping early is the cheaper mistake
        several = len(self._streak_problems) > 1 or len(self.problems) == 1
        if self._failures_in_a_row >= self._failure_limit and several:
            raise EngineError(
                f"{self._failures_in_a_row} requests of {len(self._streak_problems)} problem(s) failed in a row with "
                f"none succeeding: the engine looks down, stopping (what was committed is kept). Last error: {outcome}"
            )
        return outcome

    # ----- generation -----------------------------------------------------------------------------------------
    def generate_batch(self, requests: Sequence[_Request]) -> list[Generation | str]:
        """One batched engine call; when it fails, each request alone, so one bad request fails alone."""
        if not requests:
            return []
        try:
            generations = self.engine.generate(
                [r.conversation for r in requests], self.params, seeds=[r.seed for r in requests]
            )
        except EngineError as exc:
            if len(requests) == 1:
                return [self._count(self.describe_failure(requests[0], exc), requests[0])]
            logger.warning("a batch of %d requests failed (%s); running them one by one", len(requests), exc)
            return [self._count(self._generate_alone(r), r) for r in requests]
        if len(generations) != len(requests):
            raise RuntimeError(f"engine returned {len(generations)} generations for {len(requests)} requests")
        self._succeeded()
        return list(generations)

    def _generate_alone(self, request: _Request) -> Generation | str:
        try:
            (generation,) = self.engine.generate([request.conversation], self.params, seeds=[request.seed])
        except EngineError as exc:
            return self.describe_failure(request, exc)
        return generation

    async def agenerate(self, request: _Request) -> Generation | str:
        """One request through the engine's async path; the error text when it fails."""
        try:
            outcome = await self.engine.agenerate_one(request.conversation, self.params, request.seed)
        except EngineError as exc:
            outcome = self.describe_failure(request, exc)
        return self._count(outcome, request)

    # ----- whole runs -----------------------------------------------------------------------------------------
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
        stored = stored or {}
        first = len(self.problems) * self.config.generations_at(start_step)
        self._failure_limit = min(MAX_FAILURES_IN_A_ROW, first)
        self._succeeded()
        if self.config.schedule == "async" and self.schedule != "async":
            logger.info(
                "engine %s has no async path: the async schedule runs one batch per step (barrier)",
                getattr(self.engine, "name", type(self.engine).__name__),
            )
        if self.schedule == "barrier" and not getattr(self.engine, "supports_async", False):
            self._execute_batched(on_group, start_step, previous, stored, progress)
            return
        coroutine = self._execute_async(on_group, start_step, previous, stored, progress)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(coroutine)
            return
        # called from inside a running event loop (a notebook): run on a private loop in a thread
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, coroutine).result()

    def _execute_batched(self, on_group, start_step, previous, stored, progress) -> None:
        changed: list[set[int]] = [set() for _ in self.problems]
        for step in range(start_step, self.config.num_steps + 1):
            plans = [
                self.plan_group(step, pi, previous[pi], stored.get((step, pi)), changed[pi])
                for pi in range(len(self.problems))
            ]
            todo = [r for _, requests in plans for r in requests]
            started = time.monotonic()
            outcomes = self.generate_batch(todo)
            finished = time.monotonic()
            if progress is not None and todo:
                progress.requests_done(len(todo), sum(o.num_tokens for o in outcomes if isinstance(o, Generation)))
            at = 0
            for pi, (members, requests) in enumerate(plans):
                mine, at = outcomes[at : at + len(requests)], at + len(requests)
                population, changed[pi], tokens = self.finish_group(step, pi, members, requests, mine)
                previous[pi] = population
                on_group(GroupResult(step, pi, population, len(requests), tokens, started, finished))
                if progress is not None:
                    progress.group_done(step)

    async def _execute_async(self, on_group, start_step, previous, stored, progress) -> None:
        changed: list[set[int]] = [set() for _ in self.problems]
        # engines with a concurrency limit (openai) get requests lagging problems first, so the problems
        # stay level and the run does not end with a few problems' last steps running alone
        limit = getattr(self.engine, "max_concurrency", None)
        gate = _PriorityGate(limit) if isinstance(limit, int) and limit > 0 else None

        async def one(request: _Request) -> Generation | str:
            if gate is None:
                outcome = await self.agenerate(request)
            else:
                await gate.acquire(request.step)
                try:
                    outcome = await self.agenerate(request)
                finally:
                    gate.release()
            if progress is not None:
                progress.requests_done(1, outcome.num_tokens if isinstance(outcome, Generation) else 0)
            return outcome

        async def advance(pi: int, step: int) -> None:
            members, requests = self.plan_group(step, pi, previous[pi], stored.get((step, pi)), changed[pi])
            started = time.monotonic()
            outcomes = await asyncio.gather(*(one(r) for r in requests))
            population, changed[pi], tokens = self.finish_group(step, pi, members, requests, outcomes)
            previous[pi] = population
            on_group(GroupResult(step, pi, population, len(requests), tokens, started, time.monotonic()))
            if progress is not None:
                progress.group_done(step)

        async def chain(pi: int) -> None:
            for step in range(start_step, self.config.num_steps + 1):
                await advance(pi, step)

        try:
            if self.schedule == "barrier":
                for step in range(start_step, self.config.num_steps + 1):
                    await asyncio.gather(*(advance(pi, step) for pi in range(len(self.problems))))
            else:
                await asyncio.gather(*(chain(pi) for pi in range(len(self.problems))))
        finally:
            await self.engine.aclose()

    def run_step(self, step: int, previous: Sequence[Population] | None) -> StepResult:
        """Generate and score step `step` for every problem in one batched engine call (None at step 1)."""
        if step > 1 and previous is None and self.config.method not in ("sample", "majority"):
            raise ValueError(f"step {step} needs the previous step's populations")
        start = time.perf_counter()
        prior = list(previous) if previous is not None else [None] * len(self.problems)
        plans = [self.plan_group(step, pi, prior[pi]) for pi in range(len(self.problems))]
        todo = [r for _, requests in plans for r in requests]
        outcomes = self.generate_batch(todo)
        generated: list[Population] = []
        at = 0
        for pi, (members, requests) in enumerate(plans):
            mine, at = outcomes[at : at + len(requests)], at + len(requests)
            generated.append(self.finish_group(step, pi, members, requests, mine)[0])
        return StepResult(
            step=step,
            generated=generated,
            tokens_generated=sum(m.num_tokens for p in generated for m in p),
            wall_time_s=time.perf_counter() - start,
            truncated_candidates=sum(r.truncated for r in todo),
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

    The latest population, except for `majority`, whose step t is the pool of all samples so far.
    """
    if method == "majority":
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
