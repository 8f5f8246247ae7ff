"""Orchestration overhead of the RSA loop per aggregation request, measured with an instant engine.

    .venv/bin/python benchmarks/bench_orchestration.py [--problems 100] [--population 16] [--k 4] [--steps 4]

The engine is a FAKE that returns canned text immediately (no model), so everything timed is the
loop's own work: drawing aggregation sets, deriving seeds, building aggregation prompts (with the
context-budget check), answer extraction and scoring, and optionally the run-directory commit
(a pending line per finished (problem, step), then population + per-problem files written atomically and the metrics line appended per step). Target: < 50 us per
aggregation request for the loop itself. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from rsa.engines.base import Engine, Generation
from rsa.evaluate import evaluate
from rsa.loop import LoopConfig, RSALoop
from rsa.runs import RunDirectory, build_manifest
from rsa.tasks import Problem

TARGET_US = 50.0
# a realistic-length candidate (~1.5 kB of reasoning) ending in a math answer
CANNED = ("Let us compute the sum step by step. " * 40) + "So the answer is \\boxed{42}."


class InstantEngine(Engine):
    """Fake engine: returns the same canned completion for every request, at once."""

    name = "instant"

    def generate(self, conversations, params, seeds=None):
        return [Generation(text=CANNED, num_tokens=400) for _ in conversations]

    def count_tokens(self, text: str) -> int:
        return len(text) // 4

    @property
    def max_model_len(self) -> int:
        return 32768


def problems(n: int) -> list[Problem]:
    return [
        Problem(id=f"p{i}", task="math", question=f"What is {i} * 6 + {42 - 6 * i}?", answer="42") for i in range(n)
    ]


def time_loop(config: LoopConfig, items: list[Problem], repeats: int) -> float:
    """Best-of-`repeats` microseconds per aggregation request of the bare loop."""
    engine = InstantEngine()
    loop = RSALoop(engine, items, config)
    first = loop.run_step(1, None).generated
    loop.run_step(2, first)  # warm caches (answer parses, token counts)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        previous = first
        for step in range(2, config.num_steps + 1):
            previous = loop.run_step(step, previous).generated
        timings.append(time.perf_counter() - start)
    requests = len(items) * config.population * (config.num_steps - 1)
    return min(timings) / requests * 1e6, statistics.median(timings) / requests * 1e6


def time_requests(config: LoopConfig, items: list[Problem], repeats: int) -> float:
    """Best-of-`repeats` microseconds per request of building a step's requests (sets, seeds, prompts) alone."""
    loop = RSALoop(InstantEngine(), items, config)
    first = loop.run_step(1, None).generated
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop.requests(2, first)
        timings.append(time.perf_counter() - start)
    return min(timings) / (len(items) * config.population) * 1e6


def time_with_run_directory(config: LoopConfig, items: list[Problem]) -> float:
    """Microseconds per request of a whole run including the run-directory writes (all steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_manifest({}, model="instant", engine="instant", revision=None, problems=items, seed=0)
        start = time.perf_counter()
        evaluate(InstantEngine(), items, config, RunDirectory(tmp + "/run"), manifest=manifest, progress=False)
        elapsed = time.perf_counter() - start
    return elapsed / (len(items) * config.population * config.num_steps) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = LoopConfig(population=args.population, k=args.k, steps=args.steps, max_new_tokens=8192)
    items = problems(args.problems)
    best, median = time_loop(config, items, args.repeats)
    building = time_requests(config, items, args.repeats)
    with_io = time_with_run_directory(config, items)
    requests = args.problems * args.population * (args.steps - 1)
    print(
        f"RSA orchestration, instant engine: {args.problems} problems x N={args.population} x K={args.k}, {requests} aggregation requests per repeat"
    )
    print(
        f"  loop only (sets, seeds, prompts, extract + score): {best:.1f} us/request best, {median:.1f} us median  (target < {TARGET_US:.0f} us)"
    )
    print(f"    of which building requests (sets, seeds, prompts):  {building:.1f} us/request")
    print(f"  whole run incl. run-directory writes:              {with_io:.1f} us/request")
    print(f"  ratio loop/target: {best / TARGET_US:.2f} -> {'OK' if best < TARGET_US else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
