"""The paper's key experiment in miniature, on a 2-core CPU: base vs standard RL vs aggregation-aware RL
(offline, the paper's recipe, and on-policy), under RSA, over several training and RSA seeds.

Every stage goes through the project's real pipeline, and every stage's output lands under one folder:

    OUT/models/base          tiny model pre-trained from scratch on toy traces (rsa.toy); toy_gate.json: its gate
    OUT/data/train.jsonl     training problems;  OUT/data/eval.jsonl  held-out problems
    OUT/data/agg/            `rsa augment`: candidates sampled from the base model, mixed prompts
    OUT/models/<arm>-t<s>    `train/grpo_agg.py`, training seed s, all arms with the same steps, batch and lr:
                             standard (plain prompts only), offline (the augment mixture, the paper's recipe),
                             onpolicy (plain problems; a share of groups aggregate candidates of the current policy)
    OUT/eval/<arm>[-t<s>]-s<seed>  `rsa eval` (RSA) of each model on the same held-out problems and RSA seeds
    OUT/report/              `rsa report`: table and Pass@1 / Pass@N / majority vs step plots
    OUT/summary.md           rsa.toyreport: mean and spread per arm and step, per difficulty, paired bootstrap
                             comparisons, the paper's claims in words, diagnostics, gate and training costs

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
ARMS = ("base", "standard", "offline", "onpolicy")
TRAINED_ARMS = ARMS[1:]


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
    grpo_steps: int = 100
    prompts_per_step: int = 4
    num_generations: int = 8
    learning_rate: float = 1e-4
    max_completion_length: int = 64
    eval_population: int = 8
    eval_k: int = 3
    eval_steps: int = 5
    eval_seeds: tuple[int, ...] = (1234,)
    train_seeds: tuple[int, ...] = (0,)
    arms: tuple[str, ...] = ARMS

    @classmethod
    def full(cls) -> ToyWorldConfig:
        """The README demo."""
        return cls()

    @classmethod
    def quick(cls) -> ToyWorldConfig:
        """A few minutes: the same pipeline at a fraction of the sizes (run by CI)."""
        return cls(
            pretrain=PretrainConfig(difficulties=("4x1",), steps=800),  # the gate needs a converged base
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


def train_arm(arm: str, base: Path, out_dir: Path, data: list[str], config: ToyWorldConfig, seed: int = 0) -> Path:
    """GRPO on `data` (`--dataset_files` parquet or `--problems` spec, plus arm options) via train/grpo_agg.py in a
    subprocess, training seed `seed`; writes `toy_arm.json` (wall time) next to the model."""
    if (out_dir / "model.safetensors").is_file() and (out_dir / "config.json").is_file():
        logger.info("%s: trained model exists, skipping", arm)
        return out_dir
    batch = config.prompts_per_step * config.num_generations
    cmd = [
        sys.executable, str(TRAIN_SCRIPT), "--config", str(RECIPE),
        "--model_name_or_path", str(base), "--output_dir", str(out_dir),
        "--max_steps", str(config.grpo_steps), "--per_device_train_batch_size", str(batch),
        "--num_generations", str(config.num_generations), "--learning_rate", str(config.learning_rate),
        "--max_completion_length", str(config.max_completion_length), "--seed", str(seed), *data,
    ]  # fmt: skip
    print(f"== training {arm} (seed {seed}): {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT)
    (out_dir / "toy_arm.json").write_text(
        json.dumps({"arm": arm, "seed": seed, "wall_s": round(time.perf_counter() - start, 1)}) + "\n"
    )
    return out_dir


def arm_data(arm: str, train_file: Path, agg_file: Path, config: ToyWorldConfig) -> list[str]:
    """The training-data options of an arm: the same problems; only how aggregation prompts arise differs."""
    if arm == "standard":
        return ["--problems", str(train_file)]
    if arm == "offline":
        return ["--dataset_files", str(agg_file)]
    if arm == "onpolicy":
        return ["--problems", str(train_file), "--on_policy_aggregation", str(config.aggregate_fraction),
                "--on_policy_k", config.k]  # fmt: skip
    raise ValueError(f"unknown toy-world arm {arm!r}; use one of {TRAINED_ARMS}")


def training_costs(models: dict[tuple[str, int], Path]) -> list[str]:
    """Lines on each trained arm's wall time and (on-policy) candidate tokens generated, from its logs."""
    walls: dict[str, list[float]] = {}
    candidate_tokens: list[float] = []
    for (arm, _), path in models.items():
        info = path / "toy_arm.json"
        if info.is_file():
            walls.setdefault(arm, []).append(json.loads(info.read_text())["wall_s"])
        state = path / "trainer_state.json"
        if arm == "onpolicy" and state.is_file():
            history = json.loads(state.read_text())["log_history"]
            logged = [h["onpolicy/candidate_tokens"] for h in history if "onpolicy/candidate_tokens" in h]
            if logged:  # per-batch means over logging windows; times the steps they cover
                candidate_tokens.append(sum(logged) / len(logged) * json.loads(state.read_text())["global_step"])
    lines = ["## Training cost (same steps, batch, lr and trained completions in every arm)", ""]
    for arm, values in walls.items():
        ratio = ""
        if "standard" in walls and arm != "standard":
            ratio = f" ({sum(values) / len(values) / (sum(walls['standard']) / len(walls['standard'])):.2f}x standard)"
        lines.append(f"- {arm}: training wall time {sum(values) / len(values):.0f} s per seed{ratio}")
    if candidate_tokens:
        lines.append(
            f"- onpolicy: {sum(candidate_tokens) / len(candidate_tokens):.0f} extra candidate tokens generated per "
            "training run (candidates are sampled, never trained on)"
        )
    return lines


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


def summarise(runs: dict[tuple[str, int | None, int], Path], out: Path, extra_lines: list[str] | None = None) -> str:
    """The evidence report (rsa.toyreport) over all runs, written to `out/summary.md`."""
    from rsa.runs import write_text_atomic
    from rsa.toyreport import summarise_runs

    text = summarise_runs(runs, extra_lines)
    write_text_atomic(out / "summary.md", text)
    return text


def gate_base(base: Path, config: ToyWorldConfig) -> str:
    """Measure the base against its pre-training distribution (rsa.toydiag), once; returns the printed line."""
    from rsa.toydiag import GATE_FILE, GateThresholds, gate_failures, gate_line, measure_base, write_gate

    path = base / GATE_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        return gate_line(saved["result"], saved["failures"])
    thresholds = GateThresholds()
    result = measure_base(base, config.pretrain, max_new_tokens=config.max_completion_length)
    failures = gate_failures(result, thresholds)
    write_gate(base, result, failures, thresholds)
    return gate_line(result, failures)


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

    gate = gate_base(base, config)
    print(gate, flush=True)

    models: dict[tuple[str, int], Path] = {}
    for seed in config.train_seeds:
        for arm in (a for a in config.arms if a != "base"):
            data = arm_data(arm, train_file, agg_dir / "train.parquet", config)
            models[(arm, seed)] = train_arm(arm, base, out / "models" / f"{arm}-t{seed}", data, config, seed)

    runs: dict[tuple[str, int | None, int], Path] = {}
    for rsa_seed in config.eval_seeds:
        if "base" in config.arms:
            runs[("base", None, rsa_seed)] = evaluate(
                "base", base, eval_file, out / "eval" / f"base-s{rsa_seed}", rsa_seed, config
            )
        for (arm, seed), model in models.items():
            name = f"{arm}-t{seed}-s{rsa_seed}"
            runs[(arm, seed, rsa_seed)] = evaluate(name, model, eval_file, out / "eval" / name, rsa_seed, config)
    _rsa(["report", *[str(p) for p in runs.values()], "--out", str(out / "report")])
    table = summarise(runs, out, [*training_costs(models), "", gate])
    print(table)
    print(f"toy world finished in {time.perf_counter() - start:.0f} s; plots in {out / 'report'}")
    return table
