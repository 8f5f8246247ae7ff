"""Padding in GRPO's training forward passes at the paper's lengths: TRL's full-width chunks vs rsa.padding's trim.

    python benchmarks/bench_padding.py [--rows 128] [--aggregate-fraction 0.5] [--seed 0]

A synthetic generation batch of the shape of configs/recipes/qwen3_4b_agg.yaml on one of 8 GPUs: 128 rows
(per_device_train_batch_size 1 x steps_per_generation 128), half of them (`rsa augment`'s default
--aggregate-fraction 0.5) aggregation prompts, the task's own wording around 4 candidates of 7,900-8,192
tokens each (~33k tokens, the recipe's 33,792 budget), the other half plain prompts of ~200 tokens. Prompts
are built as text and measured with the offline tiny model's tokenizer and chat template (built here).
Completions: lognormal lengths, median 3,000 tokens, capped at max_completion_length 8,192. The batch is laid
out as TRL 1.16 lays it out (prompts left-padded, completions right-padded, to the batch's longest), and the
tokens computed by its two forward passes (old log-probs for importance sampling, then the loss) are counted
in chunks of per_device_train_batch_size rows: full width (TRL) and with rsa.padding's per-chunk trim.
Shuffled micro-batches as TRL makes them (its shuffle before the split). Prints the share of computed tokens
that are padding, side by side, for per_device_train_batch_size 1 (the recipe), 2 and 4.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def text_of_tokens(tokenizer, words: list[str], tokens: int, rng: random.Random) -> str:
    """Random words cut to `tokens` tokens of `tokenizer`."""
    text = " ".join(rng.choice(words) for _ in range(tokens))  # at least one token per word
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def build_prompts(tokenizer, rows: int, fraction: float, rng: random.Random) -> list[int]:
    """Prompt token counts (chat template included) of a mixed generation batch, in random order."""
    from rsa.tasks import Problem, get_task

    task = get_task("math")
    words = ["the", "sum", "of", "x", "is", "so", "we", "get", "then", "3", "17", "+", "=", "\\frac{1}{2}", "and"]
    counts = []
    for i in range(rows):
        question = text_of_tokens(tokenizer, words, rng.randint(120, 180), rng) + " Put the answer in \\boxed{}."
        problem = Problem(f"p{i}", "math", question, "1")
        if i < round(rows * fraction):
            candidates = [text_of_tokens(tokenizer, words, rng.randint(7900, 8192), rng) for _ in range(4)]
            conversation = task.aggregation_prompt(problem, candidates)
        else:
            conversation = task.plain_prompt(problem)
        encoded = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=True)
        counts.append(len(encoded["input_ids"] if hasattr(encoded, "keys") else encoded))
    rng.shuffle(counts)
    return counts


def layout(prompt_lengths: list[int], completion_lengths: list[int]):
    """TRL's attention mask of the generation batch (prompts left-padded, completions right-padded)."""
    import torch
    from trl.trainer.utils import pad

    prompt_mask = pad([torch.ones(n, dtype=torch.int8) for n in prompt_lengths], padding_value=0, padding_side="left")
    completion_mask = pad([torch.ones(n, dtype=torch.int8) for n in completion_lengths], padding_value=0)
    return torch.cat([prompt_mask, completion_mask], dim=1), completion_mask.size(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128, help="generation batch rows per process")
    parser.add_argument("--aggregate-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from rsa.padding import computed_tokens
    from rsa.tiny import build_tiny_model

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_model(Path(tmp) / "tiny")))
        prompts = build_prompts(tokenizer, args.rows, args.aggregate_fraction, rng)
    completions = [min(8192, max(1, round(rng.lognormvariate(8.006, 0.6)))) for _ in prompts]  # median e^8.006=3000
    mask, width_c = layout(prompts, completions)
    agg = [n for n in prompts if n > 1000]
    plain = [n for n in prompts if n <= 1000]
    print(f"generation batch of one process: {args.rows} rows, {len(agg)} aggregation prompts "
          f"({min(agg)}-{max(agg)} tokens), {len(plain)} plain ({min(plain)}-{max(plain)} tokens); completions "
          f"{min(completions)}-{max(completions)} tokens (median {sorted(completions)[len(completions) // 2]}); "
          f"padded width {mask.size(1)}; real tokens {int(mask.sum())}")  # fmt: skip
    print("tokens computed by the two forward passes (old log-probs + loss), chunks of per_device_train_batch_size")
    print(f"{'per_device':>10} | {'TRL full width':>15} | {'padding share':>13} | {'trimmed':>12} | "
          f"{'padding share':>13} | {'computed before/after':>21}")  # fmt: skip
    for per_device in (1, 2, 4):
        before, before_pad = computed_tokens(mask, width_c, per_device, trim=False)
        after, after_pad = computed_tokens(mask, width_c, per_device, trim=True)
        print(f"{per_device:>10} | {2 * before:>15,} | {before_pad / before:>13.3f} | {2 * after:>12,} | "
              f"{after_pad / after:>13.3f} | {before / after:>20.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
