"""The CPU toy world: a tiny model pre-trained from scratch on toy-addition traces.

The pre-training traces mimic what a real base LLM brings to RSA:
- plain prompts are answered with written partial sums that slip now and then (`slip_rate` per
  partial sum), so the model solves the task at a mediocre, non-zero accuracy at temperature 1 and
  independent samples make different mistakes;
- the candidates of aggregation prompts come from the same generator, so they carry the model's own
  error modes (slips, wrong addends, broken chains) and RSA populations stay in distribution;
- aggregation prompts are answered by a noisy mixture of weak-LLM behaviours: with probability
  `copy_valid_prob` a faithful copy of a candidate whose every line checks (when there is one),
  otherwise a faithful copy of a random candidate. The base thus aggregates somewhat better than it
  generates, which is why RSA lifts real base models.
RL then decides what improves: standard RL on plain prompts, or aggregation-aware RL on the mixture.
Nothing after pre-training knows which behaviour is right: RL learns from the task reward alone.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsa.tasks import get_task
from rsa.tasks.base import Conversation
from rsa.tasks.toy import DIFFICULTIES, ToySpec, check_derivation, generate_problems, noisy_solution, numbers_of

logger = logging.getLogger(__name__)

#: the problem families the tokenizer's corpus covers (fixed, so that tokenizers stay the same across mixes)
TOKENIZER_DIFFICULTIES = ("3x1", "4x1", "6x1", "4x2")


@dataclass
class PretrainConfig:
    """Toy-world pre-training settings (defaults: a few minutes on 2 CPU cores)."""

    difficulties: tuple[str, ...] = DIFFICULTIES
    slip_rate: float = 0.15
    # wrong addends and broken chains stay rare: at 0.04 per line each, the 64-wide model learnt to copy
    # candidates far less faithfully (experiments/toy_base_sweep.py, docs/TOYWORLD.md)
    addend_rate: float = 0.01
    chain_rate: float = 0.01
    aggregation_fraction: float = 0.6
    copy_valid_prob: float = 0.6
    k_min: int = 2
    k_max: int = 4
    hidden_size: int = 64
    layers: int = 4
    heads: int = 2
    head_dim: int = 32  # vLLM's CPU attention needs >= 32
    intermediate_size: int = 256
    steps: int = 1600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> list[ToySpec]:
        """The toy problem families (a difficulty mix, cycled through by `generate_problems`)."""
        return [ToySpec.parse(label) for label in self.difficulties]

    def solve(self, numbers, rng: random.Random) -> str:
        """One noisy written solution with this config's error rates."""
        return noisy_solution(numbers, rng, self.slip_rate, self.addend_rate, self.chain_rate)


def toy_tokenizer(seed: int = 0):
    """A small byte-level BPE tokenizer for the toy world: digits stay single tokens."""
    from rsa.tiny import build_tokenizer

    task = get_task("toy")
    rng = random.Random(seed)
    corpus = []
    for problem in generate_problems(400, seed + 1, [ToySpec.parse(d) for d in TOKENIZER_DIFFICULTIES]):
        candidates = [noisy_solution(numbers_of(problem), rng, 0.3, 0.1, 0.1) for _ in range(3)]
        corpus.append(problem.question + "\n" + candidates[0])
        corpus.append(task.aggregation_prompt(problem, candidates)[0]["content"])
        corpus.append(task.aggregation_prompt(problem, candidates[:1])[0]["content"])
    corpus += ["user", "assistant", "system"]
    return build_tokenizer(vocab_size=320, seed=seed, corpus=corpus, individual_digits=True)


def aggregation_target(numbers, candidates: list[str], rng: random.Random, copy_valid_prob: float) -> tuple[str, bool]:
    """The weak aggregator's answer: with `copy_valid_prob` a copy of a candidate whose lines all check
    (when one exists), otherwise a copy of a random candidate. Returns (text, whether it chose by checking)."""
    valid = [c for c in candidates if check_derivation(numbers, c).valid]
    if valid and rng.random() < copy_valid_prob:
        return rng.choice(valid), True
    return rng.choice(candidates), False


def pretraining_example(
    rng: random.Random,
    config: PretrainConfig,
    index: int,
    aggregate: bool,
    spec: ToySpec | None = None,
    k: int | None = None,
) -> tuple[Conversation, str]:
    """One (prompt conversation, target text) pair: a plain solve, or (`aggregate`) an aggregation prompt
    over K noisy candidates whose target is `aggregation_target`. `spec` and `k` are drawn from `config`
    when not given."""
    task = get_task("toy")
    if spec is None:
        specs = config.spec
        spec = specs[rng.randrange(len(specs))]
    problem = generate_problems(1, rng.randrange(1 << 30), spec, prefix=f"pre{index}")[0]
    numbers = numbers_of(problem)
    if not aggregate:
        return task.plain_prompt(problem), config.solve(numbers, rng)
    if k is None:
        k = rng.randint(config.k_min, config.k_max)
    candidates = [config.solve(numbers, rng) for _ in range(k)]
    return task.aggregation_prompt(problem, candidates), aggregation_target(
        numbers, candidates, rng, config.copy_valid_prob
    )[0]


def _encode(tokenizer, conversation: Conversation, target: str) -> tuple[list[int], list[int]]:
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    return list(prompt_ids) + target_ids, [-100] * len(prompt_ids) + target_ids


def pretrain(out_dir: str | Path, config: PretrainConfig | None = None, progress: bool = True) -> Path:
    """Build the toy tokenizer and model and pre-train it on toy traces; saves to `out_dir`.

    Returns `out_dir`. Loss is on the assistant tokens only. Deterministic given `config.seed`.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from rsa.tiny import TinyModelSpec, build_tiny_model

    config = config or PretrainConfig()
    out = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    tokenizer = toy_tokenizer(config.seed)
    spec = TinyModelSpec(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        head_dim=config.head_dim,
        max_position_embeddings=1024,
        seed=config.seed,
    )
    build_tiny_model(out, spec, tokenizer=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")  # faster than sdpa at this size
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(config.seed)
    specs = config.spec
    pad = tokenizer.pad_token_id
    bar = tqdm(range(config.steps), desc="pre-training toy model", unit="step", disable=not progress)
    losses: list[float] = []
    for step in bar:
        # a batch is all plain or all aggregation prompts of one difficulty and one K: equal lengths, so
        # almost no compute goes to padding (the mixture over batches is the configured one)
        aggregate = rng.random() < config.aggregation_fraction
        spec = specs[rng.randrange(len(specs))]
        k = rng.randint(config.k_min, config.k_max)
        batch = [
            _encode(tokenizer, *pretraining_example(rng, config, step * config.batch_size + i, aggregate, spec, k))
            for i in range(config.batch_size)
        ]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "toy_pretrain.json").write_text(
        json.dumps(
            {
                "config": asdict(config),
                "final_loss": sum(losses[-20:]) / min(20, len(losses)),
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    logger.info("toy model pre-trained: %s (final loss %.3f)", out, sum(losses[-20:]) / min(20, len(losses)))
    return out
