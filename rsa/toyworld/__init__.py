"""The CPU toy world: the paper's key experiment (base vs standard RL vs aggregation-aware RL under RSA) in miniature.

- `rsa.toyworld.pretrain`: the tiny base model pre-trained from scratch on toy-addition traces.
- `rsa.toyworld.pipeline`: the stages (pre-train, gate, problems, dataset, three GRPO arms per training seed,
  RSA evaluations, report), each a call into the library; `run_toy_world` runs or resumes them all (`rsa demo`).
- `rsa.toyworld.diagnostics`: the base model's gate and the derivation / copy diagnostics of run folders.
- `rsa.toyworld.evidence`: the summary over arms and seeds (spreads, paired bootstrap, the claims in words).

The toy task itself is a task module like the others: `rsa.tasks.toy` (task name `toy`).
"""

from rsa.toyworld.pipeline import ARMS, ToyWorldConfig, recipe_path, run_toy_world
from rsa.toyworld.pretrain import PretrainConfig, pretrain, pretraining_example, toy_tokenizer

__all__ = [
    "ARMS",
    "PretrainConfig",
    "ToyWorldConfig",
    "pretrain",
    "pretraining_example",
    "recipe_path",
    "run_toy_world",
    "toy_tokenizer",
]
