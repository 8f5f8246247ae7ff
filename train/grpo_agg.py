"""Aggregation-aware GRPO (the paper's training recipe) with TRL, vLLM rollouts, DeepSpeed and optional LoRA.

Launch (one node, 8 GPUs, vLLM colocated with training):

    accelerate launch --config_file configs/accelerate/zero3.yaml \\
        train/grpo_agg.py --config configs/recipes/qwen3_4b_agg.yaml

CPU smoke run (tiny model built offline first: `rsa tiny-model --out .cache/tiny-model`):

    python train/grpo_agg.py --config configs/recipes/cpu_smoke.yaml

Any recipe option can be overridden on the command line (`--max_steps 5`). Multi-node with a vLLM server
node: launch/multi_node.sh; SLURM: launch/slurm/; details and batch arithmetic: docs/TRAINING.md.

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

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python train/grpo_agg.py` from a checkout

from rsa.training import (  # noqa: E402
    CompletionLogger,
    ConfigError,
    GRPOAggConfig,
    GRPOAggScriptArguments,
    ProvenanceCallback,
    check_dataset_size,
    check_prompt_lengths,
    check_recipe_file,
    check_reward_columns,
    completions_log_path,
    load_training_dataset,
    model_max_length,
    provenance,
    resolve_rewards,
    resume_checkpoint,
)

logger = logging.getLogger("grpo_agg")


def main(script_args: GRPOAggScriptArguments, training_args: GRPOAggConfig, model_args) -> None:
    """Validate the data against the rewards and the model, then train with GRPO and save the model."""
    import transformers
    from transformers import AutoTokenizer, set_seed
    from trl import GRPOTrainer, get_peft_config, get_quantization_config

    logging.basicConfig(
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    set_seed(training_args.seed)
    if not model_args.model_name_or_path:
        raise ConfigError("model_name_or_path is required (a hub name or a local model directory)")

    # 1. Everything that needs no model weights: rewards, rows, prompt lengths, batch size, resume point.
    reward_funcs = resolve_rewards(script_args.reward_funcs)
    with training_args.main_process_first(desc="loading the training rows"):
        dataset = load_training_dataset(script_args)
    check_reward_columns(dataset, script_args.reward_funcs)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    max_length = model_max_length(model_args.model_name_or_path, training_args, model_args.model_revision)
    dataset = check_prompt_lengths(
        dataset,
        tokenizer,
        training_args.max_completion_length,
        max_length,
        script_args.prompt_overflow,
        training_args.chat_template_kwargs,
    )
    check_dataset_size(dataset, training_args)
    checkpoint = resume_checkpoint(training_args, script_args.auto_resume)

    # 2. Completions go to a local JSONL file as well as to the tracker (TRL's log_completions table).
    log_path = completions_log_path(script_args, training_args.output_dir)
    if log_path is not None:
        reward_funcs = CompletionLogger(log_path, training_args.reward_weights).wrap(reward_funcs)
        logger.info("completions are appended to %s", log_path)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    rollout_func = None
    if script_args.on_policy_aggregation:
        from rsa.onpolicy import OnPolicyAggregation

        rollout_func = OnPolicyAggregation(
            dataset.to_list(), script_args.on_policy_aggregation, script_args.on_policy_k, training_args.seed
        )
        logger.info("on-policy aggregation rollouts: %.2f of plain groups, K=%s", rollout_func.fraction, rollout_func.k)

    trainer = GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[ProvenanceCallback(provenance(script_args, training_args, model_args, dataset))],
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        rollout_func=rollout_func,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    logger.info("model saved to %s after %d steps", training_args.output_dir, trainer.state.global_step)
    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["rsa", "aggregation-aware-rl", "grpo"])
    if hasattr(transformers.Trainer, "end"):
        trainer.end()  # finish trackers, destroy the process group (transformers >= 5.18)


if __name__ == "__main__":
    from trl import ModelConfig, TrlParser

    try:
        check_recipe_file(sys.argv[1:])
        parser = TrlParser((GRPOAggScriptArguments, GRPOAggConfig, ModelConfig))
        script_args, training_args, model_args = parser.parse_args_and_config()
        main(script_args, training_args, model_args)
    except ConfigError as exc:
        print(f"grpo_agg: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
