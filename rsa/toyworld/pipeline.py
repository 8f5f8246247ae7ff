"""The paper's key experiment in miniature, on a 2-core CPU: base vs standard RL vs aggregation-aware RL, under RSA.

Every stage goes through the project's real pipeline, and every stage's output lands under one folder:

    OUT/models/base          tiny model pre-trained from scratch on toy traces (rsa.toy)
    OUT/data/train.jsonl     training problems;  OUT/data/eval.jsonl  held-out problems
    OUT/data/agg/            `rsa augment`: candidates sampled from the base model, mixed prompts
    OUT/models/standard      `train/grpo_agg.py` on plain prompts only (standard RL)
    OUT/models/agg           `train/grpo_agg.py` on the plain + aggregation mixture (same steps, same batch)
    OUT/eval/<arm>-s<seed>   `rsa eval` (RSA) of each model on the same held-out problems and seeds
    OUT/report/              `rsa report`: table and Pass@1 / Pass@N / majority vs step plots
    OUT/summary.md           Pass@1 at step 1 and at the last step, per arm and seed

A stage whose output is complete is skipped, so a killed demo resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsa.toy import PretrainConfig

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "train" / "grpo_agg.py"
RECIPE = ROOT / "configs" / "recipes" / "toy_grpo.yaml"
ARMS = ("base", "standard", "agg")


@dataclass
class ToyWorldConfig:
    """Sizes of the toy experiment. `full()` is the README demo (~15 min), `quick()` the CI variant."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train_problems: int = 384
    eval_problems: int = 64
    data_seed: int = 7
    candidates: int = 6
    k: str = "2-4"
    aggregate_fraction: float = 0.5
    grpo_steps: int = 200
    prompts_per_step: int = 4
    num_generations: int = 8
    learning_rate: float = 5e-5
    max_completion_length: int = 48
    eval_population: int = 8
    eval_k: int = 3
    eval_steps: int = 5
    eval_seeds: tuple[int, ...] = (1234,)

    @classmethod
    def full(cls) -> ToyWorldConfig:
        """The README demo."""
        return cls()

    @classmethod
    def quick(cls) -> ToyWorldConfig:
        """A few minutes: the same pipeline at a fraction of the sizes (run by CI)."""
        return cls(
            pretrain=PretrainConfig(steps=120, warmup_steps=20),
            learning_rate=5e-5,
            train_problems=64,
            eval_problems=12,
            candidates=4,
            grpo_steps=4,
            prompts_per_step=2,
            num_generations=4,
            eval_population=4,
            eval_k=2,
            eval_steps=3,
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _rsa(argv: list[str]) -> None:
    """Run one `rsa` subcommand in this process."""
    from rsa.cli import build_parser

    args = build_parser().parse_args(argv)
    code = args.func(args)
    if code:
        raise RuntimeError(f"rsa {' '.join(argv)} exited with {code}")


def write_problems(out: Path, config: ToyWorldConfig) -> tuple[Path, Path]:
    """Training and held-out problem files (flat JSONL, task `toy`); disjoint seeds."""
    from rsa.runs import write_jsonl_atomic
    from rsa.tasks.toy import generate_problems

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count, seed in (
        ("train", config.train_problems, config.data_seed),
        ("eval", config.eval_problems, config.data_seed + 1000),
    ):
        path = out / f"{name}.jsonl"
        rows = [
            {"id": p.id, "task": "toy", "question": p.question, "answer": p.answer}
            for p in generate_problems(count, seed, config.pretrain.spec, prefix=name)
        ]
        write_jsonl_atomic(path, rows)
        paths.append(path)
    return paths[0], paths[1]


def train_arm(arm: str, base: Path, out_dir: Path, data: list[str], config: ToyWorldConfig) -> Path:
    """GRPO on `data` (`--dataset_files` parquet or `--problems` spec) via train/grpo_agg.py in a subprocess."""
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        logger.info("%s: trained model exists, skipping", arm)
        return out_dir
    batch = config.prompts_per_step * config.num_generations
    cmd = [
        sys.executable, str(TRAIN_SCRIPT), "--config", str(RECIPE),
        "--model_name_or_path", str(base), "--output_dir", str(out_dir),
        "--max_steps", str(config.grpo_steps), "--per_device_train_batch_size", str(batch),
        "--num_generations", str(config.num_generations), "--learning_rate", str(config.learning_rate),
        "--max_completion_length", str(config.max_completion_length), *data,
    ]  # fmt: skip
    print(f"== training {arm}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT)
    return out_dir


def evaluate(arm: str, model: Path, eval_file: Path, out_dir: Path, seed: int, config: ToyWorldConfig) -> Path:
    """`rsa eval` (RSA, hf engine) of one model; resumes a partial run."""
    argv = [
        "eval", "--engine", "hf", "--model", str(model), "--dataset", str(eval_file),
        "--population", str(config.eval_population), "--k", str(config.eval_k), "--steps", str(config.eval_steps),
        "--max-new-tokens", str(config.max_completion_length), "--seed", str(seed), "--dtype", "float32",
        "--batch-size", "128", "--out", str(out_dir),
    ]  # fmt: skip
    if (out_dir / "manifest.json").is_file():
        argv.append("--resume")
    print(f"== evaluating {arm} (seed {seed})", flush=True)
    _rsa(argv)
    return out_dir


def summarise(runs: dict[tuple[str, int], Path], out: Path) -> str:
    """Markdown table of Pass@1 (step 1, last step), Pass@N and majority at the last step per arm and seed."""
    lines = [
        "| arm | seed | Pass@1 step 1 | Pass@1 last step | Pass@N last | majority last |",
        "|---|---|---|---|---|---|",
    ]
    for (arm, seed), run_dir in runs.items():
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        first, last = steps[0], steps[-1]
        lines.append(
            f"| {arm} | {seed} | {first['pass_at_1']:.3f} | {last['pass_at_1']:.3f} (step {last['step']}) "
            f"| {last['pass_at_n']:.3f} | {last['majority']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def run_toy_world(out: Path, config: ToyWorldConfig) -> str:
    """Run (or resume) the whole toy experiment under `out`; returns the summary table."""
    from rsa.toy import pretrain

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "toyworld_config.json").write_text(json.dumps(asdict(config), indent=2, default=str) + "\n")
    base = out / "models" / "base"
    if not (base / "toy_pretrain.json").is_file():
        print("== pre-training the toy base model", flush=True)
        pretrain(base, config.pretrain)
    train_file, eval_file = write_problems(out / "data", config)

    agg_dir = out / "data" / "agg"
    if not (agg_dir / "train.parquet").is_file():
        print("== building the aggregation-aware dataset (rsa augment)", flush=True)
        augment = [
            "augment", "--engine", "hf", "--model", str(base), "--dataset", str(train_file),
            "--num-candidates", str(config.candidates), "--k", config.k,
            "--aggregate-fraction", str(config.aggregate_fraction), "--seed", "1",
            "--max-model-len", "1024", "--max-completion-length", str(config.max_completion_length),
            "--candidate-max-tokens", str(config.max_completion_length), "--dtype", "float32",
            "--batch-size", "128", "--out", str(agg_dir),
        ]  # fmt: skip
        if (agg_dir / "manifest.json").is_file():
            augment.append("--resume")
        _rsa(augment)

    models = {"base": base}
    models["standard"] = train_arm(
        "standard", base, out / "models" / "standard", ["--problems", str(train_file)], config
    )
    models["agg"] = train_arm(
        "agg", base, out / "models" / "agg", ["--dataset_files", str(agg_dir / "train.parquet")], config
    )

    runs: dict[tuple[str, int], Path] = {}
    for seed in config.eval_seeds:
        for arm in ARMS:
            runs[(arm, seed)] = evaluate(arm, models[arm], eval_file, out / "eval" / f"{arm}-s{seed}", seed, config)
    _rsa(["report", *[str(p) for p in runs.values()], "--out", str(out / "report")])
    table = summarise(runs, out)
    print(table)
    print(f"toy world finished in {time.perf_counter() - start:.0f} s; plots in {out / 'report'}")
    return table
