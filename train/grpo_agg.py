"""Aggregation-aware GRPO (the paper's training recipe) with TRL, vLLM rollouts, DeepSpeed and optional LoRA.

Launch (one node, 8 GPUs, vLLM colocated with training):

    accelerate launch --config_file configs/accelerate/zero3.yaml \\
        train/grpo_agg.py --config configs/recipes/qwen3_4b_agg.yaml

CPU smoke run (tiny model built offline first: `rsa tiny-model --out models/tiny`):

    python train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml

The same entry without a checkout: `rsa train ...` or `python -m rsa.train ...` (or `accelerate launch ...
-m rsa.train ...`). This file only parses the arguments; the training logic is `rsa.train.main` and the
checks it runs are in `rsa.grpo_setup`. Any recipe option can be overridden on the command line
(`--max_steps 5`). Multi-node with a vLLM server node: launch/multi_node.sh; SLURM: launch/slurm/; details
and batch arithmetic: docs/TRAINING.md.

The training rows are the output of `rsa augment` (docs/FORMATS.md): a mix of plain prompts and
aggregation prompts holding K=4 candidates sampled once from the reference policy, each row scored by the
same task scorer that grades RSA evaluations (`rsa.rewards`, routed per row by the `task` column).
A plain problem spec (`problems: rg:...`) gives the standard-RL baseline on plain prompts only; with
`on_policy_aggregation: F` a share F of its prompt groups aggregate candidates sampled from the current
policy instead (rsa/onpolicy.py, TRL's rollout_func hook; docs/TRAINING.md).

What differs from the paper:
- Advantage: GRPO with `scale_rewards: none` (group mean subtracted, no std scaling) instead of RLOO. RLOO's
  leave-one-out baseline gives G/(G-1) times the same advantage, so with G=4 the two differ by a constant
  factor 4/3 that the learning rate absorbs.
- Loss aggregation, clipping and vLLM importance-sampling correction are TRL 1.16's (token-level `dapo`
  loss, eps 0.2, sequence-masked IS); our notes of the paper do not pin these down.
- Prompts that do not fit the model (prompt + max_completion_length) are an error, or dropped with
  `prompt_overflow: drop`; TRL 1.16 has no max_prompt_length that would truncate them.
"""

from __future__ import annotations

import sys

from rsa.train import cli, main  # noqa: F401  (`main(script_args, training_args, model_args)` is the entry)

if __name__ == "__main__":
    sys.exit(cli(prog="grpo_agg"))
