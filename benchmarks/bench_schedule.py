"""Async vs barrier RSA schedules, side by side in one process, against SIMULATED OpenAI-compatible servers.

    python benchmarks/bench_schedule.py [--part a|b|all] [--population 8] [--k 4] [--a-steps 10] [--b-steps 4]

The servers are `benchmarks/sim_server.py` (no model) in a subprocess on loopback: each has a fixed
number of concurrent slots, like a batching server, and holds a request for length x ms-per-token,
its length drawn from a lognormal (median `--median-tokens`, shape `--sigma`) seeded by the request's
seed. The client is the real stack: `rsa.evaluate.evaluate` (run directory, fsynced commits) over the
real openai engine, at most 2 x slots requests in flight per server.

(a) one server with many slots (`--a-slots`, `--a-problems`, `--a-ms-per-token`, `--a-steps`, T=10 as
    `rsa eval` defaults to): the same RSA run
    under the barrier and the async schedule; prints both wall times, the ratio barrier/async (target
    >= 1.3) and the utilisation, busy slot-time / available slot-time (target >= 0.9 under async), and
    checks that metrics.jsonl is identical apart from wall times.
(b) the async schedule on 1, 2 and 4 servers with few slots each (`--b-slots`, `--b-problems`,
    `--b-ms-per-token`, `--b-steps`), the same run; prints the throughput ratio to 1 server (target >= 3.5 at 4)
    and the utilisation; checks identical metrics again.

Milliseconds per token are large enough that the client (about 5-30 ms of CPU per request on a
loaded 2-core machine) never limits the servers.

Timings on a shared machine are noisy; the ratios come from runs in the same process, one after another.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rsa.engines.openai import OpenAIEngine
from rsa.evaluate import evaluate
from rsa.loop import LoopConfig
from rsa.runs import RunDirectory, build_manifest
from rsa.tasks import Problem

HERE = Path(__file__).resolve().parent


def start_servers(count: int, args: argparse.Namespace) -> tuple[subprocess.Popen, list[str]]:
    """Start `count` simulated servers in a subprocess; returns it and their base URLs."""
    command = [
        sys.executable, str(HERE / "sim_server.py"), "--servers", str(count), "--slots", str(args.slots),
        "--ms-per-token", str(args.ms_per_token), "--median-tokens", str(args.median_tokens),
        "--sigma", str(args.sigma),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORTS "):
        proc.kill()
        raise RuntimeError(f"simulator did not start: {line!r}")
    return proc, [f"http://127.0.0.1:{port}/v1" for port in line.split()[1].split(",")]


def busy_and_slots(urls: list[str]) -> tuple[float, int]:
    """Busy slot-seconds and slots summed over the servers."""
    stats = [httpx.get(url.removesuffix("/v1") + "/stats").json() for url in urls]
    return sum(s["busy_s"] for s in stats), sum(s["slots"] for s in stats)


def problems(n: int) -> list[Problem]:
    return [Problem(id=f"p{i}", task="math", question=f"What is {i} * 3 + 1?", answer=str(3 * i + 1)) for i in range(n)]


def part_args(args: argparse.Namespace, part: str) -> argparse.Namespace:
    """`args` with the part's slots, problems and milliseconds per token."""
    chosen = vars(args).copy()
    for key in ("slots", "problems", "ms_per_token", "steps"):
        chosen[key] = chosen[f"{part}_{key}"]
    return argparse.Namespace(**chosen)


def run_once(urls: list[str], schedule: str, args: argparse.Namespace, out: Path) -> dict:
    """One whole run into `out`; returns wall time, utilisation and the metrics lines without wall times."""
    for url in urls:
        httpx.post(url.removesuffix("/v1") + "/reset")
    items = problems(args.problems)
    config = LoopConfig(
        population=args.population, k=args.k, steps=args.steps, max_new_tokens=4096, seed=1, schedule=schedule
    )
    manifest = build_manifest({}, model="sim", engine="openai", revision=None, problems=items, seed=1)
    engine = OpenAIEngine(
        "sim", base_urls=urls, max_model_len=1 << 20, max_concurrency=2 * args.slots * len(urls), max_retries=2
    )
    start = time.monotonic()
    metrics = evaluate(engine, items, config, RunDirectory(out), manifest=manifest, progress=False)
    wall = time.monotonic() - start
    busy, slots = busy_and_slots(urls)
    for line in metrics:
        line.pop("wall_time_s")
    requests = args.problems * args.population * args.steps
    return {"wall": wall, "utilisation": busy / (slots * wall), "metrics": metrics, "throughput": requests / wall}


def part_a(args: argparse.Namespace, tmp: Path) -> None:
    args = part_args(args, "a")
    proc, urls = start_servers(1, args)
    try:
        barrier = run_once(urls, "barrier", args, tmp / "a-barrier")
        asynchronous = run_once(urls, "async", args, tmp / "a-async")
    finally:
        proc.kill()
    same = barrier["metrics"] == asynchronous["metrics"]
    ratio = barrier["wall"] / asynchronous["wall"]
    print(
        f"(a) T={args.steps}, 1 server x {args.slots} slots, {args.problems} problems, {args.ms_per_token:g} ms per token"
    )
    print(f"    barrier: {barrier['wall']:7.2f} s  utilisation {barrier['utilisation']:.3f}")
    print(f"    async:   {asynchronous['wall']:7.2f} s  utilisation {asynchronous['utilisation']:.3f}")
    print(f"    speed-up async vs barrier: {ratio:.2f}x (target >= 1.3)  metrics identical: {same}")
    print(f"    async utilisation {asynchronous['utilisation']:.3f} (target >= 0.9)")


def part_b(args: argparse.Namespace, tmp: Path) -> None:
    args = part_args(args, "b")
    results = {}
    for count in (1, 2, 4):
        proc, urls = start_servers(count, args)
        try:
            results[count] = run_once(urls, "async", args, tmp / f"b-{count}")
        finally:
            proc.kill()
    same = all(r["metrics"] == results[1]["metrics"] for r in results.values())
    print(
        f"(b) T={args.steps}, async schedule on 1, 2, 4 servers x {args.slots} slots, {args.problems} problems, "
        f"{args.ms_per_token:g} ms per token"
    )
    for count, r in results.items():
        print(
            f"    {count} server(s): {r['wall']:7.2f} s  {r['throughput']:7.1f} requests/s  "
            f"throughput x{r['throughput'] / results[1]['throughput']:.2f}  utilisation {r['utilisation']:.3f}"
        )
    print(f"    scale-out 1 -> 4 servers: {results[4]['throughput'] / results[1]['throughput']:.2f}x (target >= 3.5)")
    print(f"    metrics identical across server counts: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--a-slots", type=int, default=32)
    parser.add_argument("--a-problems", type=int, default=48)
    parser.add_argument("--a-ms-per-token", type=float, default=3.0)
    parser.add_argument("--a-steps", type=int, default=10)
    parser.add_argument("--b-slots", type=int, default=4)
    parser.add_argument("--b-problems", type=int, default=32)
    parser.add_argument("--b-ms-per-token", type=float, default=1.5)
    parser.add_argument("--b-steps", type=int, default=4)
    parser.add_argument("--median-tokens", type=float, default=200.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(
        f"RSA N={args.population} K={args.k}; completion length ~ lognormal(median "
        f"{args.median_tokens:g} tokens, sigma {args.sigma:g}), each token holding its slot for the given ms"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("a", "all"):
            part_a(args, Path(tmp))
        if args.part in ("b", "all"):
            part_b(args, Path(tmp))


if __name__ == "__main__":
    main()
