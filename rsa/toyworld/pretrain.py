"""The CPU toy world: a tiny model pre-trained from scratch on a toy world's traces (rsa.toyworld.worlds).

The pre-training traces mimic what a real base LLM brings to RSA:
- plain prompts are answered by a weak solver (the `add` world: written partial sums that slip now and then;
  the `pick` world: a valid pair with `valid_rate`, otherwise a near miss), so the model solves the task at a
  mediocre, non-zero accuracy at temperature 1 and independent samples make different mistakes;
- the candidates of aggregation prompts come from the same solver, so they carry the model's own error modes
  and RSA populations stay in distribution;
- aggregation prompts are answered by a weak aggregator (`add`: with probability `copy_valid_prob` a faithful
  copy of a candidate whose every line checks, otherwise of a random candidate; `pick`: one written check per
  candidate that slips with `check_slip_rate`, then a copy of the first candidate marked ok). The base thus
  aggregates somewhat better than it generates, which is why RSA lifts real base models.
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
from rsa.tasks.toy import DIFFICULTIES
from rsa.toyworld.worlds import World, get_world

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Toy-world pre-training settings (defaults: the `add` world, a few minutes on 2 CPU cores)."""

    world: str = "add"
    difficulties: tuple[str, ...] = DIFFICULTIES
    slip_rate: float = 0.15
    # wrong addends and broken chains stay rare: at 0.04 per line each, the 64-wide model learnt to copy
    # candidates far less faithfully (experiments/toy_base_sweep.py, docs/TOYWORLD.md)
    addend_rate: float = 0.01
    chain_rate: float = 0.01
    aggregation_fraction: float = 0.6
    copy_valid_prob: float = 0.6
    valid_rate: float = 0.35  # pick world: share of plain answers that are a valid pair
    check_slip_rate: float = 0.2  # pick world: share of written checks whose sum is off by 1 or 2
    check_prob: float = 0.6  # pick world: share of aggregation answers that check the candidates (else a random copy)
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

    def __post_init__(self) -> None:
        get_world(self.world)  # a clear error for an unknown world, before anything is built

    @property
    def toy_world(self) -> World:
        """The world whose traces this config pre-trains on."""
        return get_world(self.world)


def toy_tokenizer(seed: int = 0, world: str = "add"):
    """A small byte-level BPE tokenizer for a toy world: digits stay single tokens."""
    from rsa.tiny import build_tokenizer

    return build_tokenizer(
        vocab_size=320, seed=seed, corpus=get_world(world).tokenizer_corpus(seed), individual_digits=True
    )


def pretraining_example(
    rng: random.Random,
    config: PretrainConfig,
    index: int,
    aggregate: bool,
    difficulty: str | None = None,
    k: int | None = None,
) -> tuple[Conversation, str]:
    """One (prompt conversation, target text) pair: a plain solve, or (`aggregate`) an aggregation prompt over
    K candidates from the weak solver whose target is the world's weak aggregator's answer. `difficulty` and `k`
    are drawn from `config` when not given."""
    world = config.toy_world
    task = get_task(world.task)
    if difficulty is None:
        difficulty = config.difficulties[rng.randrange(len(config.difficulties))]
    problem = world.generate(1, rng.randrange(1 << 30), [difficulty], prefix=f"pre{index}")[0]
    if not aggregate:
        return task.plain_prompt(problem), world.plain_target(problem, rng, config)
    if k is None:
        k = rng.randint(config.k_min, config.k_max)
    candidates = [world.plain_target(problem, rng, config) for _ in range(k)]
    return task.aggregation_prompt(problem, candidates), world.aggregation_target(problem, candidates, rng, config)


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
    tokenizer = toy_tokenizer(config.seed, config.world)
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
    difficulties = config.difficulties
    pad = tokenizer.pad_token_id
    bar = tqdm(range(config.steps), desc="pre-training toy model", unit="step", disable=not progress)
    losses: list[float] = []
    for step in bar:
        # a batch is all plain or all aggregation prompts of one difficulty and one K: equal lengths, so
        # almost no compute goes to padding (the mixture over batches is the configured one)
        aggregate = rng.random() < config.aggregation_fraction
        difficulty = difficulties[rng.randrange(len(difficulties))]
        k = rng.randint(config.k_min, config.k_max)
        batch = [
            _encode(
                tokenizer, *pretraining_example(rng, config, step * config.batch_size + i, aggregate, difficulty, k)
            )
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
