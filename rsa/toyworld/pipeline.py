"""The paper's key experiment in miniature, on a 2-core CPU: base vs standard RL vs aggregation-aware RL, under RSA.

Every stage calls the project's library (no command line is re-parsed), and every stage's output lands under
one folder:

    OUT/models/base          tiny model pre-trained from scratch on toy traces (rsa.toyworld.pretrain)
    OUT/data/train.jsonl     training problems;  OUT/data/eval.jsonl  held-out problems
    OUT/data/agg/            rsa.augment.build_augmented_dataset: candidates from the base model, mixed prompts
    OUT/models/standard      `python -m rsa.train` on plain prompts only (standard RL)
    OUT/models/agg           `python -m rsa.train` on the plain + aggregation mixture (same steps, same batch)
    OUT/eval/<arm>-s<seed>   RSA evaluation (rsa.loop + rsa.runs) of each model on the same problems and seeds
    OUT/report/              rsa.report.write_report: table and Pass@1 / Pass@N / majority vs step plots
    OUT/summary.md           Pass@1 at step 1 and at the last step, per arm and seed

A stage whose output is complete is skipped, so a killed demo resumes where it stopped. The GRPO recipe
ships inside the package (`rsa/resources/recipes/toy_grpo.yaml`), so the demo runs from an installed wheel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from rsa.toyworld.pretrain import PretrainConfig

logger = logging.getLogger(__name__)

ARMS = ("base", "standard", "agg")
#: the toy GRPO recipe, package data relative to the `rsa` package (configs/recipes/toy_grpo.yaml links to it)
RECIPE = "resources/recipes/toy_grpo.yaml"
#: hf engine options of every generation stage: float32 on CPU, large micro-batches (the model is tiny)
ENGINE_OPTIONS = {"dtype": "float32", "batch_size": 128}


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


@contextlib.contextmanager
def recipe_path() -> Iterator[Path]:
    """The toy GRPO recipe shipped in the package, as a file path for the duration of the `with` block."""
    with resources.as_file(resources.files("rsa").joinpath(RECIPE)) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the toy recipe {RECIPE} is missing from the installed rsa package")
        yield path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


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


def build_dataset(base: Path, train_file: Path, out_dir: Path, config: ToyWorldConfig) -> Path:
    """The aggregation-aware training rows: candidates sampled from `base`, mixed prompts; resumes a partial build."""
    from rsa.augment import DATASET_FILE, CandidateConfig, MixConfig, build_augmented_dataset

    dataset = out_dir / DATASET_FILE
    if dataset.is_file():
        logger.info("aggregation-aware dataset exists, skipping: %s", dataset)
        return dataset
    logger.info("building the aggregation-aware dataset from the base model's candidates")
    candidates = CandidateConfig(
        model=str(base.resolve()),
        dataset=str(train_file),
        engine="hf",
        engine_options=dict(ENGINE_OPTIONS),
        num_candidates=config.candidates,
        candidate_max_tokens=config.max_completion_length,
        seed=1,
    )
    mix = MixConfig(
        max_model_len=1024,
        max_completion_length=config.max_completion_length,
        aggregate_fraction=config.aggregate_fraction,
        k=config.k,
        seed=1,
    )
    report = build_augmented_dataset(candidates, mix, out_dir, resume=(out_dir / "manifest.json").is_file())
    logger.info("aggregation-aware dataset:\n%s", report.summary())
    return dataset


def train_arm(arm: str, base: Path, out_dir: Path, data: list[str], config: ToyWorldConfig) -> Path:
    """GRPO from `base` on `data` (`--dataset_files` parquet or `--problems` spec) with the toy recipe.

    Runs `python -m rsa.train` in a subprocess: each arm gets a fresh process (TRL and accelerate keep
    process-wide state, and the trainer's memory goes back to the OS between arms), and the logged command
    is exactly what a user runs to repeat the arm by hand.
    """
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        logger.info("%s: trained model exists, skipping", arm)
        return out_dir
    batch = config.prompts_per_step * config.num_generations
    out_dir.mkdir(parents=True, exist_ok=True)
    with recipe_path() as recipe:
        cmd = [
            sys.executable, "-m", "rsa.train", "--config", str(recipe),
            "--model_name_or_path", str(base.resolve()), "--output_dir", str(out_dir.resolve()),
            "--max_steps", str(config.grpo_steps), "--per_device_train_batch_size", str(batch),
            "--num_generations", str(config.num_generations), "--learning_rate", str(config.learning_rate),
            "--max_completion_length", str(config.max_completion_length), *data,
        ]  # fmt: skip
        logger.info("training %s: %s", arm, " ".join(cmd))
        subprocess.run(cmd, check=True, env=_env(), cwd=out_dir)
    return out_dir


def evaluate(arm: str, model: Path, eval_file: Path, out_dir: Path, seed: int, config: ToyWorldConfig) -> Path:
    """RSA evaluation of one model (hf engine) into the run directory `out_dir`; resumes a partial run."""
    from rsa.data import load_problems
    from rsa.engines import make_engine
    from rsa.loop import LoopConfig, RSALoop
    from rsa.runs import RunDirectory, build_manifest, model_revision, run_evaluation

    loop_config = LoopConfig(
        population=config.eval_population,
        k=config.eval_k,
        steps=config.eval_steps,
        seed=seed,
        max_new_tokens=config.max_completion_length,
    )
    problems = load_problems(str(eval_file))
    model_path = str(model.resolve())
    run_config = {
        "engine": "hf",
        "model": model_path,
        "dataset": str(eval_file),
        **loop_config.to_dict(),
        **ENGINE_OPTIONS,
        "out": str(out_dir),
    }
    manifest = build_manifest(
        run_config,
        model=model_path,
        engine="hf",
        revision=model_revision(model_path, query_hub=False),
        problems=problems,
        seed=seed,
    )
    run_dir = RunDirectory(out_dir)
    if run_dir.exists():
        run_dir.check_resumable(manifest)
        if len(run_dir.completed_steps()) >= loop_config.num_steps:
            run_evaluation(None, problems, loop_config, run_dir, progress=False)  # nothing left to generate
            logger.info("%s (seed %d): evaluation complete, skipping", arm, seed)
            return out_dir
    logger.info("evaluating %s (seed %d)", arm, seed)
    engine = make_engine("hf", model_path, **ENGINE_OPTIONS)
    try:
        RSALoop(engine, problems, loop_config).check_context()
        if not run_dir.exists():
            run_dir.create(manifest, problems)
        run_evaluation(engine, problems, loop_config, run_dir)
    finally:
        engine.close()
    return out_dir


def summarise(runs: dict[tuple[str, int], Path], out: Path) -> str:
    """Markdown table of Pass@1 (step 1, last step), Pass@N and majority at the last step per arm and seed."""
    from rsa.runs import read_jsonl, write_text_atomic

    lines = [
        "| arm | seed | Pass@1 step 1 | Pass@1 last step | Pass@N last | majority last |",
        "|---|---|---|---|---|---|",
    ]
    for (arm, seed), run_dir in runs.items():
        steps = read_jsonl(run_dir / "metrics.jsonl")
        first, last = steps[0], steps[-1]
        lines.append(
            f"| {arm} | {seed} | {first['pass_at_1']:.3f} | {last['pass_at_1']:.3f} (step {last['step']}) "
            f"| {last['pass_at_n']:.3f} | {last['majority']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "summary.md", text)
    return text


def run_toy_world(out: Path, config: ToyWorldConfig) -> str:
    """Run (or resume) the whole toy experiment under `out`; returns the summary table."""
    from rsa.report import write_report
    from rsa.runs import write_json_atomic
    from rsa.toyworld.pretrain import pretrain

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "toyworld_config.json", json.loads(json.dumps(asdict(config), default=str)))
    base = out / "models" / "base"
    if not (base / "toy_pretrain.json").is_file():
        logger.info("pre-training the toy base model")
        pretrain(base, config.pretrain)
    train_file, eval_file = write_problems(out / "data", config)
    agg_rows = build_dataset(base, train_file, out / "data" / "agg", config)

    models = {"base": base}
    models["standard"] = train_arm(
        "standard", base, out / "models" / "standard", ["--problems", str(train_file.resolve())], config
    )
    models["agg"] = train_arm("agg", base, out / "models" / "agg", ["--dataset_files", str(agg_rows.resolve())], config)

    runs: dict[tuple[str, int], Path] = {}
    for seed in config.eval_seeds:
        for arm in ARMS:
            runs[(arm, seed)] = evaluate(arm, models[arm], eval_file, out / "eval" / f"{arm}-s{seed}", seed, config)
    paths = write_report(list(runs.values()), out / "report")
    table = summarise(runs, out)
    logger.info("toy world finished in %.0f s; report in %s", time.perf_counter() - start, paths["markdown"].parent)
    return table
