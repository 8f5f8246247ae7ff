"""Worker of tests/test_onpolicy.py: on-policy rollouts through TRL's server-mode `generate`, one per process.

    accelerate launch --multi_gpu --num_processes 2 tests/onpolicy_server_worker.py MODEL_DIR OUT_DIR STEPS

A real GRPOTrainer on the tiny model in every process (gloo), and TRL's real `VLLMGeneration.generate` server
branch: it gathers every process's prompts, rank 0 asks the server, the answer is broadcast and each process
keeps the slice at process_index x its own count. The server itself needs CUDA (NCCL weight transfer), so
its client is a FAKE on rank 0 that echoes each prompt's token ids as the completion: a candidate's text
then names the problem it was generated for. Each process writes `rank<i>.json`: per step and row, the
plain question it was given and the prompt it trained on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class EchoClient:
    """FAKE vLLM server client (the real one needs CUDA): every completion is its prompt's own token ids."""

    def generate(self, prompts, n=1, max_tokens=16, **kwargs):
        completions = [list(ids) for ids in prompts for _ in range(n)]
        return {
            "prompt_ids": [list(ids) for ids in prompts],
            "completion_ids": completions,
            "logprobs": [[[0.0]] * len(c) for c in completions],
        }


def main(model_dir: str, out: Path, steps: int) -> None:
    from datasets import Dataset
    from trl import GRPOTrainer
    from trl.generation.vllm_generation import VLLMGeneration

    from rsa.data import load_problems
    from rsa.grpo_setup import GRPOAggConfig, problems_to_rows
    from rsa.onpolicy import OnPolicyAggregation
    from rsa.rewards import get_reward

    rows = problems_to_rows(load_problems("rg:basic_arithmetic", size=8, seed=0))
    args = GRPOAggConfig(output_dir=str(out / "trainer"), use_cpu=True, bf16=False, num_generations=2,
                         per_device_train_batch_size=4, max_completion_length=512, report_to=[], seed=0)  # fmt: skip
    rollout = OnPolicyAggregation(rows, fraction=0.5, k=2, seed=0)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[get_reward("task")], args=args,
                          train_dataset=Dataset.from_list(rows), rollout_func=rollout)  # fmt: skip
    generation = object.__new__(VLLMGeneration)  # TRL's server-mode generate, without a server to connect to
    generation.__dict__.update(
        accelerator=trainer.accelerator, mode="server", enable_sleep_mode=False, vllm_client=EchoClient(),
        temperature=1.0, top_p=1.0, top_k=-1, min_p=None, repetition_penalty=1.0, max_completion_length=512,
        logprobs=0, structured_outputs_regex=None, generation_kwargs={},
    )  # fmt: skip
    trainer.use_vllm, trainer.vllm_generation = True, generation
    rank = trainer.accelerator.process_index
    records = []
    for step in range(steps):
        trainer.state.global_step = trainer._last_loaded_step = step  # no weight sync: there is no server
        mine = rows[4 * rank : 4 * rank + 4][step % 2 * 2 : step % 2 * 2 + 2]  # two problems per process
        prompts = [row["prompt"] for row in mine for _ in range(2)]
        result = rollout(prompts, trainer)
        records.append(
            {
                "step": step,
                "questions": [p[-1]["content"] for p in prompts],
                "kinds": result["kind"],
                "rollout_prompts": result["rollout_prompt"],
            }
        )
    (out / f"rank{rank}.json").write_text(json.dumps(records))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
