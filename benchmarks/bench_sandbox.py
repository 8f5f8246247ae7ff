"""Sandbox throughput: programs per second with 1 and 2 workers, and the speed-up ratio.

Run: `.venv/bin/python benchmarks/bench_sandbox.py [--programs 24]`

Two workloads: a trivial correct program with one test, and a typical 10-test stdin suite (LiveCodeBench-like
small inputs). Every program runs in its own fresh sandbox (bubblewrap when available; the mode is printed).
The ratio compares 2 workers to 1; on a 2-core machine it is bounded by the cores the sandboxes share with
each other and with anything else running.
"""

from __future__ import annotations

import argparse
import random
import time

from rsa.sandbox import Limits, Sandbox, TestSuite

TRIVIAL = ("print(int(input()) + 1)\n", TestSuite(("41\n",), ("42\n",)))


def ten_test_suite(seed: int = 0) -> TestSuite:
    """Ten tests: sum of up to 1000 integers per test."""
    rng = random.Random(seed)
    inputs, outputs = [], []
    for _ in range(10):
        values = [rng.randint(-(10**9), 10**9) for _ in range(rng.randint(1, 1000))]
        inputs.append(f"{len(values)}\n{' '.join(map(str, values))}\n")
        outputs.append(f"{sum(values)}\n")
    return TestSuite(tuple(inputs), tuple(outputs))


SUITE_PROGRAM = "import sys\ndata = sys.stdin.read().split()\nn = int(data[0])\nprint(sum(map(int, data[1 : n + 1])))\n"


def throughput(sandbox: Sandbox, job: tuple[str, TestSuite], n_programs: int, workers: int) -> float:
    """Programs per second for `n_programs` copies of `job` over `workers` sandboxes (all must pass)."""
    jobs = [job] * n_programs
    start = time.perf_counter()
    results = sandbox.run_many(jobs, max_workers=workers)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if not r.all_passed]
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark programs failed: {failed[0]}")
    return n_programs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=24, help="programs per measurement")
    args = parser.parse_args()
    with Sandbox(Limits(timeout_s=6.0), max_workers=2) as sandbox:
        print(f"sandbox mode: {sandbox.mode}")
        sandbox.run(*TRIVIAL)  # warm-up (probe, page cache)
        workloads = {"trivial, 1 test": TRIVIAL, "typical, 10 tests": (SUITE_PROGRAM, ten_test_suite())}
        print(f"{'workload':<20} {'1 worker':>12} {'2 workers':>12} {'ratio':>7}")
        for name, job in workloads.items():
            one = throughput(sandbox, job, args.programs, 1)
            two = throughput(sandbox, job, args.programs, 2)
            print(f"{name:<20} {one:>8.2f} p/s {two:>8.2f} p/s {two / one:>6.2f}x")


if __name__ == "__main__":
    main()
