"""When the loop's requests run: the two drivers, the priority gate, failure counting and resume bookkeeping.

The loop (`rsa.loop.RSALoop`) says what a (step, problem) group asks for; this module decides when it runs.
A problem's step t+1 depends only on its own step t, and seeds and aggregation sets depend only on
coordinates, so a driver changes when requests run, never what they return (on engines that honour
per-request seeds):

* `run_batched`: one batched `engine.generate` call per step over all problems (the barrier schedule on
  engines without an async path, and `RSALoop.run_step`).
* `run_async`: requests one by one through `Engine.agenerate_one`; under the async schedule each problem
  moves to step t+1 as soon as its own step t is in, under the barrier schedule all problems' step t run
  together. With a concurrency limit (openai's `max_concurrency`) a `PriorityGate` releases lagging
  problems' requests first.

`run_schedule` runs a whole evaluation on an event loop of its own and releases the engine's async resources
at the end; `run_async` alone runs on the caller's loop and leaves the engine open (`rsa serve` runs one per
request on a shared engine).

Failed requests become their error text (`EngineCalls`); `FailureStreak` stops the run with `EngineError` when
the engine looks down. `Groups` keeps each problem's latest population and reuses what an interrupted run
stored (`reusable_members`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from rsa.engines.base import Engine, EngineError, Generation, SamplingParams
from rsa.types import Conversation

logger = logging.getLogger(__name__)

SCHEDULES = ("async", "barrier")
#: failed requests in a row, with no success in between, after which the engine is taken to be down
MAX_FAILURES_IN_A_ROW = 16

Outcome = Generation | str  # a generation, or the error text of a request that failed


class Request(Protocol):
    """What the scheduler needs of a request (`rsa.loop` builds them)."""

    step: int
    problem_index: int
    slot: int
    conversation: Conversation
    seed: int


class StoredMember(Protocol):
    """What the drivers and resume bookkeeping need of a member (`rsa.loop.Member`)."""

    parents: tuple[int, ...]
    num_tokens: int
    error: str | None

    @property
    def failed(self) -> bool: ...


class Algorithm(Protocol):
    """What the drivers ask of the loop (`rsa.loop.RSALoop`): a group's parents, its requests, their members."""

    def aggregation_sets(self, step: int, problem_index: int, previous: Sequence | None) -> list[tuple[int, ...]]: ...

    def build_request(
        self, step: int, problem_index: int, slot: int, parents: tuple[int, ...], previous: Sequence | None
    ) -> Request: ...

    def member(self, request: Request, outcome: Outcome) -> StoredMember: ...

    def carried(self, step: int, problem_index: int, previous: Sequence | None) -> list | None: ...


class ProgressHook(Protocol):
    """What the drivers report while they run (see `rsa.progress.Progress`)."""

    def requests_done(self, count: int, tokens: int) -> None: ...

    def group_done(self, step: int) -> None: ...


#: called with each finished group: (step, problem index, population, members generated now, their tokens,
#: time.monotonic() of its first request sent, of its last request back)
Report = Callable[[int, int, list, int, int, float, float], None]


def effective_schedule(engine: Engine, requested: str) -> str:
    """The schedule that actually runs: async needs an engine with an async path."""
    if requested == "async" and not getattr(engine, "supports_async", False):
        return "barrier"
    return requested


# ----- failure counting and engine calls ----------------------------------------------------------------------
class FailureStreak:
    """Failed requests in a row with none succeeding; `EngineError` when the engine looks down.

    One problem failing alone is that problem's fault (a prompt the server rejects), not the engine's, so the
    streak must span two problems; with a single problem in the run the two cannot be told apart, and stopping
    early is the cheaper mistake.
    """

    def __init__(self, num_problems: int, limit: int = MAX_FAILURES_IN_A_ROW) -> None:
        self.num_problems = num_problems
        self.limit = limit
        self.count = 0
        self.problems: set[int] = set()  # problems of the current streak

    def reset(self, limit: int) -> None:
        """Start a new run: no streak, and `limit` failures in a row mean the engine is down."""
        self.limit = limit
        self.succeeded()

    def succeeded(self) -> None:
        """A request succeeded: the streak ends."""
        self.count = 0
        self.problems.clear()

    def record(self, outcome: Outcome, request: Request) -> Outcome:
        """Count `outcome` of `request` and hand it back; EngineError when the streak says the engine is down."""
        if not isinstance(outcome, str):
            self.succeeded()
            return outcome
        self.count += 1
        self.problems.add(request.problem_index)
        several = len(self.problems) > 1 or self.num_problems == 1
        if self.count >= self.limit and several:
            raise EngineError(
                f"{self.count} requests of {len(self.problems)} problem(s) failed in a row with "
                f"none succeeding: the engine looks down, stopping (what was committed is kept). Last error: {outcome}"
            )
        return outcome


class EngineCalls:
    """Requests to one engine; a request that fails inside it becomes its error text (`describe(request, exc)`)."""

    def __init__(
        self,
        engine: Engine,
        params: SamplingParams,
        describe: Callable[[Request, BaseException], str],
        num_problems: int,
    ) -> None:
        self.engine = engine
        self.params = params
        self.describe = describe
        self.failures = FailureStreak(num_problems)

    def batch(self, requests: Sequence[Request]) -> list[Outcome]:
        """One batched engine call; when it fails, each request alone, so one bad request fails alone."""
        if not requests:
            return []
        try:
            generations = self.engine.generate(
                [r.conversation for r in requests], self.params, seeds=[r.seed for r in requests]
            )
        except EngineError as exc:
            if len(requests) == 1:
                return [self.failures.record(self.describe(requests[0], exc), requests[0])]
            logger.warning("a batch of %d requests failed (%s); running them one by one", len(requests), exc)
            return [self.failures.record(self._alone(r), r) for r in requests]
        if len(generations) != len(requests):
            raise RuntimeError(f"engine returned {len(generations)} generations for {len(requests)} requests")
        self.failures.succeeded()
        return list(generations)

    def _alone(self, request: Request) -> Outcome:
        try:
            (generation,) = self.engine.generate([request.conversation], self.params, seeds=[request.seed])
        except EngineError as exc:
            return self.describe(request, exc)
        return generation

    async def one(self, request: Request) -> Outcome:
        """One request through the engine's async path; the error text when it fails."""
        try:
            outcome = await self.engine.agenerate_one(request.conversation, self.params, request.seed)
        except EngineError as exc:
            outcome = self.describe(request, exc)
        return self.failures.record(outcome, request)


class PriorityGate:
    """At most `limit` requests in flight; waiting ones go in order of (step, arrival): lagging problems first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.waiting: list[tuple[int, int, asyncio.Future]] = []
        self.arrivals = 0

    async def acquire(self, step: int) -> None:
        """Wait for a free place; requests of lower steps are let in first."""
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return
        self.arrivals += 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (step, self.arrivals, future))
        await future  # the releaser counted us in

    def release(self) -> None:
        """Free a place and let the first waiting requests in."""
        self.in_flight -= 1
        while self.waiting and self.in_flight < self.limit:
            _, _, future = heapq.heappop(self.waiting)
            if not future.done():
                self.in_flight += 1
                future.set_result(None)


# ----- resume bookkeeping -------------------------------------------------------------------------------------
def reusable_members(
    stored: Sequence[StoredMember] | None, sets: Sequence[tuple[int, ...]], changed: Collection[int]
) -> list[StoredMember | None]:
    """Per slot, the stored member that still holds (None where the slot must be generated).

    A stored member holds unless it failed, its parents differ, or one of its parents is in `changed` (the
    previous step's slots regenerated successfully in this run, so its prompt would differ).
    """
    kept: list[StoredMember | None] = [None] * len(sets)
    for slot, parents in enumerate(sets):
        old = stored[slot] if stored is not None and slot < len(stored) else None
        if old is not None and not old.failed and old.parents == parents and not set(parents) & set(changed):
            kept[slot] = old
    return kept


class Groups:
    """Each problem's latest population as the drivers advance, reusing what an interrupted run stored.

    `previous`: each problem's population before the first step run (None at step 1); `stored`: members of
    (step, problem index) kept from an earlier run; `report` is called with every finished group.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        previous: Sequence[Sequence[StoredMember] | None],
        stored: dict[tuple[int, int], Sequence[StoredMember]],
        report: Report,
    ) -> None:
        self.algorithm = algorithm
        self.previous = list(previous)
        self.stored = stored
        self.report = report
        self.changed: list[set[int]] = [set() for _ in self.previous]

    def plan(self, step: int, problem_index: int) -> tuple[list[StoredMember | None], list[Request]]:
        """The group's reusable members (None where missing) and the requests that must run."""
        population = self.previous[problem_index]
        carried = self.algorithm.carried(step, problem_index, population)
        if carried is not None:  # early stopping: the converged population goes on unchanged, nothing to generate
            return list(carried), []
        sets = self.algorithm.aggregation_sets(step, problem_index, population)
        members = reusable_members(self.stored.get((step, problem_index)), sets, self.changed[problem_index])
        todo = [
            self.algorithm.build_request(step, problem_index, slot, parents, population)
            for slot, parents in enumerate(sets)
            if members[slot] is None
        ]
        return members, todo

    def finish(
        self,
        step: int,
        problem_index: int,
        members: list[StoredMember | None],
        todo: Sequence[Request],
        outcomes: Sequence[Outcome],
        started: float,
        finished: float,
    ) -> None:
        """Fill the generated members in, make the group the problem's latest population, and report it."""
        changed, tokens = set(), 0
        for request, outcome in zip(todo, outcomes):
            member = self.algorithm.member(request, outcome)
            members[request.slot] = member
            tokens += member.num_tokens
            if member.failed:
                logger.warning("request failed: %s", member.error)
            else:
                changed.add(request.slot)
        population = list(members)
        self.previous[problem_index] = population
        self.changed[problem_index] = changed
        self.report(step, problem_index, population, len(todo), tokens, started, finished)


# ----- the drivers --------------------------------------------------------------------------------------------
def run_batched(groups: Groups, calls: EngineCalls, steps: Sequence[int], progress: ProgressHook | None) -> None:
    """Steps one at a time, each one batched engine call over every problem's requests."""
    for step in steps:
        plans = [groups.plan(step, pi) for pi in range(len(groups.previous))]
        todo = [r for _, requests in plans for r in requests]
        started = time.monotonic()
        outcomes = calls.batch(todo)
        finished = time.monotonic()
        if progress is not None and todo:
            progress.requests_done(len(todo), sum(o.num_tokens for o in outcomes if isinstance(o, Generation)))
        at = 0
        for pi, (members, requests) in enumerate(plans):
            mine, at = outcomes[at : at + len(requests)], at + len(requests)
            groups.finish(step, pi, members, requests, mine, started, finished)
            if progress is not None:
                progress.group_done(step)


async def run_async(
    groups: Groups, calls: EngineCalls, steps: Sequence[int], progress: ProgressHook | None, *, barrier: bool
) -> None:
    """Requests one by one on the engine's async path: each problem's steps in a chain, or step by step (`barrier`)."""
    limit = getattr(calls.engine, "max_concurrency", None)
    gate = PriorityGate(limit) if isinstance(limit, int) and limit > 0 else None

    async def one(request: Request) -> Outcome:
        if gate is None:
            outcome = await calls.one(request)
        else:
            await gate.acquire(request.step)
            try:
                outcome = await calls.one(request)
            finally:
                gate.release()
        if progress is not None:
            progress.requests_done(1, outcome.num_tokens if isinstance(outcome, Generation) else 0)
        return outcome

    async def advance(pi: int, step: int) -> None:
        members, requests = groups.plan(step, pi)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(one(r) for r in requests))
        groups.finish(step, pi, members, requests, outcomes, started, time.monotonic())
        if progress is not None:
            progress.group_done(step)

    async def chain(pi: int) -> None:
        for step in steps:
            await advance(pi, step)

    problems = range(len(groups.previous))
    if barrier:
        for step in steps:
            await asyncio.gather(*(advance(pi, step) for pi in problems))
    else:
        await asyncio.gather(*(chain(pi) for pi in problems))


async def _run_and_close(coroutine, engine: Engine) -> None:
    """Run `coroutine`, then release what the engine bound to this event loop (it ends with the run)."""
    try:
        await coroutine
    finally:
        await engine.aclose()


def run_schedule(
    groups: Groups, calls: EngineCalls, steps: Sequence[int], schedule: str, progress: ProgressHook | None
) -> None:
    """Run `steps` of every group under `schedule` (async falls back to batched steps without an async path)."""
    engine = calls.engine
    if schedule == "async" and effective_schedule(engine, schedule) != "async":
        logger.info(
            "engine %s has no async path: the async schedule runs one batch per step (barrier)",
            getattr(engine, "name", type(engine).__name__),
        )
    if not getattr(engine, "supports_async", False):
        run_batched(groups, calls, steps, progress)
        return
    coroutine = _run_and_close(run_async(groups, calls, steps, progress, barrier=schedule == "barrier"), engine)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    # called from inside a running event loop (a notebook): run on a private loop in a thread
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coroutine).result()
