"""Aggregation-aware GRPO training (train/grpo_agg.py, rsa.grpo_setup), with real TRL.

Everything runs on the offline tiny model. The heavy tests (marked slow) train for real: the smoke recipe
in-process (parameters change; resume continues the step count; LoRA), two-process gloo DDP and DeepSpeed
ZeRO-2 through `accelerate launch`, then `rsa eval` on the trained checkpoint and `rsa publish --dry-run`.
A random tiny model scores 0 on every task, so the smoke recipe adds its `length_shaping` reward (a
smoke-test-only term) to give GRPO groups reward variance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.data import generate_reasoning_gym
from rsa.tasks import Problem, get_task

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "recipes" / "cpu_smoke.yaml"
SCRIPT = REPO / "train" / "grpo_agg.py"
RECIPES = [
    REPO / "configs" / "recipes" / f"{name}.yaml"
    for name in ("cpu_smoke", "qwen3_4b_agg", "qwen3_4b_standard", "qwen3_4b_agg_lora")
]


def _load_script():
    spec = importlib.util.spec_from_file_location("grpo_agg", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----- helpers: training rows as `rsa augment` writes them (docs/FORMATS.md) --------------------------------------
def training_rows(n: int = 4, seed: int = 3) -> list[dict]:
    """Plain and aggregation rows (K=4 candidates) for Reasoning Gym problems, plus one math problem."""
    rg = get_task("rg")
    rows = []
    for p in generate_reasoning_gym(["basic_arithmetic"], n, seed=seed):
        entry = json.dumps(p.meta["entry"])
        candidates = [f"Compute step by step. <answer>{p.answer if i == 0 else i}</answer>" for i in range(4)]
        scores = [rg.score(c, p) for c in candidates]
        common = {"task": "rg", "answer": p.answer, "dataset_name": "basic_arithmetic", "entry": entry,
                  "tests": None, "problem_id": p.id, "reference_model": "tiny", "seed": 0}  # fmt: skip
        rows.append({**common, "prompt": rg.plain_prompt(p), "kind": "plain", "k": 0, "candidate_ids": [],
                     "candidate_scores": [], "majority_correct": None, "mean_candidate_accuracy": None})  # fmt: skip
        rows.append({**common, "prompt": rg.aggregation_prompt(p, candidates), "kind": "aggregate", "k": 4,
                     "candidate_ids": [0, 1, 2, 3], "candidate_scores": scores, "majority_correct": False,
                     "mean_candidate_accuracy": sum(scores) / 4})  # fmt: skip
    math = Problem("m1", "math", "What is 2+3? Put the answer in \\boxed{}.", "5")
    rows.append({"prompt": get_task("math").plain_prompt(math), "task": "math", "answer": "5", "dataset_name": None,
                 "entry": None, "tests": None, "kind": "plain", "problem_id": "m1", "k": 0, "candidate_ids": [],
                 "candidate_scores": [], "majority_correct": None, "mean_candidate_accuracy": None,
                 "reference_model": "tiny", "seed": 0})  # fmt: skip
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def parse(argv: list[str]):
    from trl import ModelConfig, TrlParser

    from rsa.grpo_setup import GRPOAggConfig, GRPOAggScriptArguments

    return TrlParser((GRPOAggScriptArguments, GRPOAggConfig, ModelConfig)).parse_args_and_config([str(a) for a in argv])


def smoke_argv(model_dir, out_dir, *extra) -> list[str]:
    return ["--config", SMOKE, "--model_name_or_path", model_dir, "--output_dir", out_dir, *extra]


@pytest.fixture(scope="module")
def weightless_model(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model's config and tokenizer without weights: loading the model would fail, validation must not."""
    out = tmp_path_factory.mktemp("weightless")
    for item in Path(tiny_model_dir).iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, out / item.name)
    return str(out)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    return write_parquet(training_rows(), tmp_path_factory.mktemp("rows") / "train.parquet")


# ----- configuration and validation (no model weights are ever loaded here) ------------------------------------
def test_recipes_parse_with_the_paper_settings():
    from rsa.grpo_setup import resolve_rewards

    for recipe in RECIPES:
        script, args, model = parse(["--config", recipe, "--use_cpu", "true", "--bf16", "false"])
        # the batch arithmetic written in the recipe's header comment is what the recipe sets
        header = recipe.read_text(encoding="utf-8")
        per_device, devices, accumulation = map(int, re.search(
            r"completions per optimizer step = (?:per_device_train_batch_size )?(\d+) (?:per device )?x (\d+) "
            r"(?:GPUs?|process(?:es)?) x gradient_accumulation_steps (\d+)", header).groups())  # fmt: skip
        prompts, generations = map(int, re.search(r"= (\d+) prompts x num_generations (\d+)", header).groups())
        assert (per_device, accumulation) == (args.per_device_train_batch_size, args.gradient_accumulation_steps)
        assert generations == args.num_generations, recipe.name
        assert per_device * devices * accumulation == prompts * generations, recipe.name
        assert [f.__name__ for f in resolve_rewards(script.reward_funcs)] == [
            f"reward_{name}" for name in script.reward_funcs
        ], recipe.name
    script, args, model = parse(["--config", REPO / "configs/recipes/qwen3_4b_agg.yaml", "--use_cpu", "true",
                                 "--bf16", "false"])  # fmt: skip
    assert (args.num_generations, args.learning_rate, args.beta, args.scale_rewards) == (4, 1e-6, 0.0, "none")
    assert (args.max_completion_length, args.use_vllm, args.vllm_mode) == (8192, True, "colocate")
    assert args.gradient_checkpointing and args.vllm_importance_sampling_correction
    # 256 prompts x 4 generations per optimizer step on 8 GPUs: 1 per device x 8 x 128 accumulation steps
    assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 256 * 4
    script, _, _ = parse(["--config", REPO / "configs/recipes/qwen3_4b_standard.yaml", "--use_cpu", "true",
                          "--bf16", "false"])  # fmt: skip
    assert script.dataset_kinds == ["plain"]
    _, _, model = parse(["--config", REPO / "configs/recipes/qwen3_4b_agg_lora.yaml", "--use_cpu", "true",
                         "--bf16", "false"])  # fmt: skip
    assert model.use_peft and model.lora_r > 0


def test_recipes_default_tracker_is_installed():
    """Each recipe's own `report_to` (no override) resolves to trainer callbacks that construct here."""
    from transformers.integrations import get_reporting_integration_callbacks

    for recipe in RECIPES:
        _, args, _ = parse(["--config", recipe, "--use_cpu", "true", "--bf16", "false"])
        assert args.report_to and args.report_to != ["none"], f"{recipe.name}: no tracker"
        callbacks = get_reporting_integration_callbacks(args.report_to)
        assert len(callbacks) == len(args.report_to), recipe.name
        for callback in callbacks:
            callback()  # raises when the tracker's package is missing


def test_batch_not_divisible_by_num_generations_says_what_to_change(tmp_path):
    from rsa.grpo_setup import ConfigError

    with pytest.raises(ConfigError, match="Set per_device_train_batch_size to a multiple of 2"):
        parse(smoke_argv("m", tmp_path, "--per_device_train_batch_size", "3"))
    with pytest.raises(ConfigError, match="generation_batch_size to a multiple of 12"):
        parse(smoke_argv("m", tmp_path, "--num_generations", "3", "--generation_batch_size", "8"))
    with pytest.raises(ConfigError, match=">= 2 completions"):
        parse(smoke_argv("m", tmp_path, "--num_generations", "1", "--per_device_train_batch_size", "2"))


def test_script_argument_errors(tmp_path):
    from rsa.grpo_setup import ConfigError, GRPOAggScriptArguments, check_recipe_file

    with pytest.raises(ConfigError, match="no training data"):
        GRPOAggScriptArguments()
    with pytest.raises(ConfigError, match="dataset_kinds"):
        GRPOAggScriptArguments(problems="rg:basic_arithmetic", dataset_kinds=["fancy"])
    with pytest.raises(ConfigError, match="does not exist"):
        check_recipe_file(["--config", str(tmp_path / "nope.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        check_recipe_file(["--config", str(tmp_path / "list.yaml")])
    check_recipe_file(["--config", str(SMOKE)])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_completion_length", "4090"], r"do not fit.*Lower max_completion_length.*prompt_overflow: drop"),
        (["--reward_funcs", "task", "chess"], "unknown task 'chess'"),
        (["--per_device_train_batch_size", "64", "--num_generations", "2"], "needs 32 distinct prompts"),
    ],
)
def test_validation_errors_come_before_the_model_loads(weightless_model, rows_file, tmp_path, extra, message):
    from rsa.grpo_setup import ConfigError

    grpo_agg = _load_script()
    args = parse(smoke_argv(weightless_model, tmp_path / "out", "--dataset_files", rows_file, *extra))
    with pytest.raises(ConfigError, match=message):
        grpo_agg.main(*args)


def test_rows_missing_reward_fields_are_named(weightless_model, tmp_path):
    from rsa.grpo_setup import ConfigError

    grpo_agg = _load_script()
    rows = training_rows(2)
    no_answer = write_parquet([{k: v for k, v in r.items() if k != "answer"} for r in rows], tmp_path / "a.parquet")
    args = parse(smoke_argv(weightless_model, tmp_path / "o1", "--dataset_files", no_answer))
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['answer'\]"):
        grpo_agg.main(*args)
    rows[1]["entry"] = None
    no_entry = write_parquet(rows, tmp_path / "b.parquet")
    args = parse(smoke_argv(weightless_model, tmp_path / "o2", "--dataset_files", no_entry, "--problems", ""))
    with pytest.raises(ConfigError, match="training row 2: field 'entry' is missing"):
        grpo_agg.main(*args)


def test_dataset_mixing_kinds_and_overflow(tiny_model_dir, rows_file):
    from transformers import AutoTokenizer

    from rsa.grpo_setup import GRPOAggScriptArguments, check_prompt_lengths, load_training_dataset, prompt_lengths

    args = GRPOAggScriptArguments(dataset_files=[str(rows_file)], problems="rg:spell_backward", problems_size=3)
    mixed = load_training_dataset(args)
    assert len(mixed) == 9 + 3 and sorted(set(mixed["kind"])) == ["aggregate", "plain"]
    assert mixed[len(mixed) - 1]["problem_id"].startswith("rg-spell_backward")
    assert isinstance(mixed[len(mixed) - 1]["entry"], str)  # JSON text, as in docs/FORMATS.md
    plain = load_training_dataset(GRPOAggScriptArguments(dataset_files=[str(rows_file)], dataset_kinds=["plain"]))
    assert set(plain["kind"]) == {"plain"} and len(plain) == 5
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = prompt_lengths(mixed, tokenizer)
    budget = sorted(lengths)[len(lengths) // 2]
    kept = check_prompt_lengths(mixed, tokenizer, 100, budget + 100, "drop")
    assert len(kept) == sum(n <= budget for n in lengths) < len(mixed)


def test_completion_logger_writes_one_line_per_completion(tmp_path):
    from rsa.grpo_setup import CompletionLogger, reward_length_shaping
    from rsa.rewards import reward_task

    log = tmp_path / "c.jsonl"
    funcs = CompletionLogger(log, [1.0, 0.5]).wrap([reward_task, reward_length_shaping])
    assert [f.__name__ for f in funcs] == ["reward_task", "reward_length_shaping"]
    state = type("State", (), {"global_step": 7})()
    kwargs = dict(prompts=[[{"role": "user", "content": "q"}]] * 2, task=["math"] * 2, answer=["4", "4"],
                  kind=["plain", "aggregate"], trainer_state=state,
                  completions=[[{"role": "assistant", "content": "\\boxed{4}"}], [{"role": "assistant", "content": "x"}]])  # fmt: skip
    for f in funcs:
        f(**kwargs)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [7, 7] and [x["kind"] for x in lines] == ["plain", "aggregate"]
    assert lines[0]["rewards"]["reward_task"] == 1.0
    assert lines[0]["reward"] == pytest.approx(1.0 + 0.5 * len("\\boxed{4}") / 1000)


def test_auto_resume_false_starts_over_and_an_explicit_checkpoint_still_wins(tiny_model_dir, tmp_path):
    """An output_dir holding a finished checkpoint: by default training resumes from it (and counts as finished);
    with `auto_resume: false` neither happens, while an explicit resume_from_checkpoint is still honoured."""
    from rsa.grpo_setup import finished_step, resume_checkpoint

    out = tmp_path / "out"
    for step in (1, 2):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 0.1}))
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 2, "epoch": 0.1}))
    script, args, _ = parse(smoke_argv(tiny_model_dir, out, "--max_steps", "2", "--auto_resume", "false"))
    assert script.auto_resume is False
    assert resume_checkpoint(args, script.auto_resume) is None
    assert finished_step(args, None, script.auto_resume) is None  # trains from step 0 again
    script, args, _ = parse(smoke_argv(tiny_model_dir, out, "--max_steps", "2"))
    assert script.auto_resume is True
    last = resume_checkpoint(args, script.auto_resume)
    assert last == str(out / "checkpoint-2") and finished_step(args, last, script.auto_resume) == 2
    _, args, _ = parse(smoke_argv(tiny_model_dir, out, "--max_steps", "2", "--auto_resume", "false",
                                  "--resume_from_checkpoint", out / "checkpoint-1"))  # fmt: skip
    assert resume_checkpoint(args, False) == str(out / "checkpoint-1")


# ----- real training -----------------------------------------------------------------------------------------
def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, rows_file, tmp_path_factory) -> Path:
    """The smoke recipe trained in-process for 2 steps on aggregation + plain rows mixed with the recipe's problems."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    grpo_agg = _load_script()
    grpo_agg.main(*parse(smoke_argv(tiny_model_dir, out, "--dataset_files", rows_file, "--max_steps", "2")))
    return out


@pytest.mark.slow
def test_smoke_recipe_trains_for_real(trained, tiny_model_dir):
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    before, after = _weights(tiny_model_dir), _weights(trained / "checkpoint-2")
    changed = [k for k in before if not before[k].equal(after[k])]
    assert changed, "two GRPO steps left every parameter unchanged"
    from rsa.grpo_setup import read_completions

    lines = read_completions(trained / "completions.jsonl")
    assert len(lines) == 2 * 4 and {x["step"] for x in lines} == {0, 1}
    assert set(lines[0]) >= {"prompt", "completion", "rewards", "reward", "step", "task", "kind"}
    assert set(lines[0]["rewards"]) == {"reward_task", "reward_length_shaping"}
    record = json.loads((trained / "checkpoint-2" / "rsa_training.json").read_text())
    assert record["script_args"]["reward_funcs"] == ["task", "length_shaping"]
    assert record["training_args"]["num_generations"] == 2
    # 9 rows from the file (4 plain + 4 aggregate + 1 math) and the recipe's 16 plain Reasoning Gym problems
    assert record["data"] == {"rows": 25, "kinds": {"aggregate": 4, "plain": 21}}


@pytest.mark.slow
def test_resume_continues_the_step_count(trained, tiny_model_dir, rows_file, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    grpo_agg = _load_script()
    grpo_agg.main(*parse(smoke_argv(tiny_model_dir, out, "--dataset_files", rows_file, "--max_steps", "3")))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
    # the first 8 lines are the original run's; resuming ran only the third step (generated at global step 2)
    assert len(lines) == 12 and {x["step"] for x in lines[8:]} == {2}


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_finished_training_stays_finished(trained, tiny_model_dir, rows_file, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(trained, out)
    finished = _files(out)
    grpo_agg = _load_script()
    # the command that trained it (max_steps 2), run again: nothing to do
    grpo_agg.main(*parse(smoke_argv(tiny_model_dir, out, "--dataset_files", rows_file, "--max_steps", "2")))
    assert _files(out) == finished  # no new step, checkpoint, event file or log line; the saved model untouched


@pytest.mark.slow
def test_a_resumed_training_logs_each_step_once(trained, tiny_model_dir, rows_file, tmp_path):
    out = tmp_path / "resumed-twice"
    shutil.copytree(trained, out)
    grpo_agg = _load_script()
    argv = smoke_argv(tiny_model_dir, out, "--dataset_files", rows_file, "--max_steps", "3")
    grpo_agg.main(*parse(argv))  # trains (and logs) step 2
    # resumed from checkpoint-2 again (as after a kill before the next checkpoint): step 2 is generated again
    grpo_agg.main(*parse([*argv, "--resume_from_checkpoint", out / "checkpoint-2"]))
    steps = [json.loads(x)["step"] for x in (out / "completions.jsonl").read_text().splitlines()]
    assert steps == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.slow
def test_trained_checkpoint_loads_in_rsa_eval_and_publishes(trained, tmp_path):
    from rsa.cli import main

    checkpoint = trained / "checkpoint-2"
    run = tmp_path / "runs" / "ckpt2-rg"
    argv = ["eval", "--engine", "hf", "--model", str(checkpoint), "--dataset", "rg:basic_arithmetic", "--size", "2",
            "-N", "2", "-K", "2", "-T", "2", "--max-new-tokens", "8", "--out", str(run), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    out = tmp_path / "hub"
    assert main(["publish", str(checkpoint), "--runs", str(run), "--repo-id", "me/tiny-agg", "--out", str(out),
                 "--dry-run"]) == 0  # fmt: skip
    card = (out / "README.md").read_text()
    assert "| ckpt2-rg | rg:basic_arithmetic | 2 / 2 / 2 |" in card and "| optimizer steps | 2 |" in card
    assert "aggregation-aware RL on a mixture of plain prompts and aggregation prompts" in card
    from huggingface_hub import ModelCard

    results = ModelCard(card).data.eval_results
    assert [(r.metric_type, r.metric_config) for r in results] == [
        ("pass@1", "N=2,K=2,step=1"), ("pass@1", "N=2,K=2,step=2"), ("majority@n", "N=2,K=2,step=2"),
        ("pass@n", "N=2,K=2,step=2"),
    ]  # fmt: skip
    # the publisher's folders (the tiny model, the output and run folders) reach no uploaded file
    for path in (p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert str(tmp_path).encode() not in data and str(trained.parents[1]).encode() not in data, path


@pytest.mark.slow
def test_lora_trains_an_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    grpo_agg = _load_script()
    argv = smoke_argv(tiny_model_dir, out, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
                      "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "1", "--learning_rate", "1e-2")  # fmt: skip
    grpo_agg.main(*parse(argv))
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B matrices start at 0 and must have moved"


# ----- multi-process: gloo DDP and DeepSpeed ZeRO-2 through `accelerate launch` ----------------------------------
def _accelerate(tmp_path, launch_args: list[str], model_dir: str, rows: Path, env: dict | None = None) -> Path:
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", *launch_args, "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
               *map(str, smoke_argv(model_dir, out, "--dataset_files", rows, "--max_steps", "2",
                                    "--save_strategy", "no"))]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def _check_two_ranks(out: Path) -> dict:
    from rsa.grpo_setup import read_completions

    lines = read_completions(out / "completions.jsonl")
    # 2 processes x 4 completions x 2 steps, gathered and written once by rank 0
    assert len(lines) == 16 and {x["rank"] for x in lines} == {0, 1}
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    return json.loads((out / "rsa_training.json").read_text())


@pytest.mark.slow
def test_two_process_ddp(tiny_model_dir, rows_file, tmp_path):
    out = _accelerate(tmp_path, ["--config_file", str(REPO / "configs/accelerate/ddp.yaml")], tiny_model_dir, rows_file)
    record = _check_two_ranks(out)
    assert (record["distributed_type"], record["num_processes"]) == ("MULTI_CPU", 2)


@pytest.mark.slow
def test_deepspeed_zero2(tiny_model_dir, rows_file, tmp_path):
    pytest.importorskip("deepspeed")
    cache = REPO / ".cache" / "torch_extensions"  # the JIT-built op (~50 s once) is reused by later runs
    cache.mkdir(parents=True, exist_ok=True)
    out = _accelerate(tmp_path, ["--config_file", str(REPO / "configs/accelerate/zero2.yaml")], tiny_model_dir,
                      rows_file, env={"TORCH_EXTENSIONS_DIR": str(cache)})  # fmt: skip
    record = _check_two_ranks(out)
    assert (record["distributed_type"], record["zero_stage"]) == ("DEEPSPEED", 2)
