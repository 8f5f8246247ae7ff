"""Publishing a trained checkpoint: a folder with the model, its RSA evaluation and a model card; Hub upload.

`prepare_folder` builds the folder that will be uploaded: the checkpoint's model files (hard-linked when
possible, never the optimizer/scheduler/RNG state), `README.md` (the model card with the RSA evaluation
table and plot), and `eval/` (the plot images, `report.csv`, and each run's `manifest.json` and
`metrics.jsonl`). `push_folder` creates the Hub repository and uploads the folder in one commit; it
refuses to run without a Hugging Face token or with the Hub switched offline.

The evaluation comes from run directories written by `rsa eval` (a `manifest.json` and a `metrics.jsonl`
line per RSA step); tables and plots are those of `rsa.report`, so the card matches `rsa report`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: checkpoint files that are training state, not the model: never published
EXCLUDED = (
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "global_step*",
    "latest",
    "zero_to_fp32.py",
    "README.md",
    "*.tmp",
)
PROVENANCE_FILE = "rsa_training.json"  # written by rsa.training.ProvenanceCallback
CARD_TAGS = ["rsa", "recursive-self-aggregation", "aggregation-aware-rl", "grpo", "trl"]


@dataclass
class CheckpointInfo:
    """What the card says about a checkpoint: base model, adapter or full model, training settings."""

    path: Path
    is_adapter: bool
    base_model: str | None
    global_step: int | None
    training: dict


def inspect_checkpoint(checkpoint: str | Path) -> CheckpointInfo:
    """Read a checkpoint directory; ValueError when it holds neither a model nor a LoRA adapter."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is not a directory")
    is_adapter = (path / "adapter_config.json").is_file()
    if not is_adapter and not (path / "config.json").is_file():
        raise ValueError(
            f"{path}: not a model checkpoint (expected config.json, or adapter_config.json for LoRA); "
            "pass a checkpoint-* directory or the training output_dir"
        )
    training = _read_json(path / PROVENANCE_FILE) or _read_json(path.parent / PROVENANCE_FILE) or {}
    base = (training.get("model_args") or {}).get("model_name_or_path")
    if is_adapter:
        base = base or (_read_json(path / "adapter_config.json") or {}).get("base_model_name_or_path")
    state = _read_json(path / "trainer_state.json") or {}
    return CheckpointInfo(path, is_adapter, base, state.get("global_step"), training)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg})") from None


def _is_hub_id(name: str | None) -> bool:
    """Whether `name` looks like a Hub repository id rather than a local path (card metadata needs an id)."""
    if not name or name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDED)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: copy
        shutil.copy2(src, dst)


def _step_table(steps: list[dict]) -> str:
    lines = ["| step | Pass@1 | Pass@N | majority | mean length |", "|---|---|---|---|---|"]
    for s in steps:
        length = s.get("mean_length")
        lines.append(
            f"| {s['step']} | {100 * s['pass_at_1']:.1f} | {100 * s['pass_at_n']:.1f} | "
            f"{100 * s['majority']:.1f} | {'' if length is None else f'{length:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def _training_section(info: CheckpointInfo) -> str:
    if not info.training:
        return "No training record (`rsa_training.json`) was found next to the checkpoint.\n"
    script = info.training.get("script_args") or {}
    args = info.training.get("training_args") or {}
    rows = [
        ("base model", info.base_model),
        ("training data", script.get("dataset_files") or script.get("dataset_name") or script.get("problems")),
        ("training rows", _rows_label(info.training)),
        ("rewards", script.get("reward_funcs")),
        ("completions per prompt", args.get("num_generations")),
        ("advantage scaling", args.get("scale_rewards")),
        ("loss", args.get("loss_type")),
        ("KL coefficient", args.get("beta")),
        ("learning rate", args.get("learning_rate")),
        ("max completion tokens", args.get("max_completion_length")),
        ("processes", info.training.get("num_processes") or info.training.get("world_size")),
        ("distributed", _distributed_label(info.training)),
        ("optimizer steps", info.global_step),
        ("LoRA adapter", info.is_adapter),
    ]
    packages = info.training.get("packages") or {}
    out = "| setting | value |\n|---|---|\n"
    out += "".join(f"| {k} | {v} |\n" for k, v in rows if v is not None)
    if packages:
        out += "\nPackages: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if v) + "\n"
    return out


def _prompt_mix(training: dict) -> str | None:
    """'aggregate' when the run trained on aggregation prompts, 'plain' when only on plain ones, None if unknown."""
    kinds = (training.get("data") or {}).get("kinds")
    if not kinds:
        return None
    return "aggregate" if kinds.get("aggregate") else "plain"


def _rows_label(training: dict) -> str | None:
    data = training.get("data") or {}
    if "rows" not in data:
        return None
    kinds = ", ".join(f"{k} {v}" for k, v in sorted((data.get("kinds") or {}).items()))
    return f"{data['rows']} ({kinds})" if kinds else str(data["rows"])


def _distributed_label(training: dict) -> str | None:
    kind = training.get("distributed_type")
    if kind and training.get("zero_stage"):
        return f"{kind} ZeRO-{training['zero_stage']}"
    return kind


def model_card(info: CheckpointInfo, runs: list, repo_id: str, license: str | None = None) -> str:
    """The model card (README.md): metadata, RSA evaluation table and plot, training settings, usage."""
    from huggingface_hub import ModelCardData

    from rsa.report import markdown_table, table_rows

    data = ModelCardData(
        base_model=info.base_model if _is_hub_id(info.base_model) else None,
        library_name="peft" if info.is_adapter else "transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS,
        license=license,
    )
    name = repo_id.split("/")[-1]
    intro = (
        f"`{name}` was trained with GRPO (`train/grpo_agg.py`, rsa-rl)"
        + {
            "aggregate": ": aggregation-aware RL on a mixture of plain prompts and aggregation prompts that hold several "
            "candidate solutions, so that the model improves at recursive self-aggregation (RSA) as well as at single "
            "answers.",
            "plain": " on plain prompts only (standard RL, the baseline of aggregation-aware RL).",
            None: ".",
        }[_prompt_mix(info.training)]
    )
    if info.is_adapter:
        intro += f" This repository holds a LoRA adapter for `{info.base_model}`."
    parts = [
        f"---\n{data.to_yaml()}\n---\n",
        f"# {name}\n\n{intro}\n",
        "## RSA evaluation\n\nAccuracies in percent. Step 1 is plain sampling (N independent answers); each later "
        "step aggregates K-member subsets of the previous population. Pass@1 is the mean accuracy of the "
        "population, Pass@N the share of problems with at least one correct member.\n",
        markdown_table(table_rows(runs)),
        "\n![Pass@1, Pass@N and majority vote vs RSA step](eval/rsa_steps.png)\n",
    ]
    for run in runs:
        cfg = run.manifest.get("config", {})
        parts.append(
            f"\n### {run.path.name}: {cfg.get('dataset')}, N={cfg.get('population')} K={cfg.get('k')} "
            f"T={cfg.get('steps')}, seed {cfg.get('seed')}\n\n" + _step_table(run.steps)
        )
    parts.append("\n## Training\n\n" + _training_section(info))
    parts.append(
        "\n## Usage\n\n```bash\n"
        f"rsa eval --model {repo_id} --dataset aime25 --population 16 --k 4 --steps 10 --out runs/{name}-aime25\n"
        "```\n\nThe run directories behind the table are in `eval/` (manifest and per-step metrics).\n"
    )
    return "\n".join(parts)


def prepare_folder(
    checkpoint: str | Path,
    run_dirs: list[str | Path],
    out_dir: str | Path,
    repo_id: str,
    license: str | None = None,
) -> Path:
    """Write the upload folder (model files, README.md, eval/) into `out_dir`; returns its path."""
    from rsa.report import csv_table, load_run, plot_runs, table_rows

    if not run_dirs:
        raise ValueError("no RSA run directories given: evaluate the checkpoint with `rsa eval` first")
    info = inspect_checkpoint(checkpoint)
    runs = [load_run(p) for p in run_dirs]
    out = Path(out_dir)
    if out.resolve() == info.path.resolve():
        raise ValueError("--out must differ from the checkpoint directory")
    out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in sorted(info.path.iterdir()):
        if src.is_file() and not _excluded(src.name):
            _link_or_copy(src, out / src.name)
            copied += 1
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    plot_runs(runs, eval_dir)
    (eval_dir / "report.csv").write_text(csv_table(table_rows(runs)), encoding="utf-8")
    for run in runs:
        for name in ("manifest.json", "metrics.jsonl", "final.json"):
            if (run.path / name).is_file():
                _link_or_copy(run.path / name, eval_dir / run.path.name / name)
    (out / "README.md").write_text(model_card(info, runs, repo_id, license), encoding="utf-8")
    logger.info("publish folder %s: %d model files, %d evaluation run(s)", out, copied, len(runs))
    return out


def resolve_token(token: str | None = None) -> str | None:
    """The Hugging Face token: `token`, else HF_TOKEN, else the one saved by `hf auth login`."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def push_folder(
    folder: str | Path, repo_id: str, token: str | None, private: bool = False, revision: str | None = None
) -> str:
    """Create `repo_id` (if needed) and upload `folder` as one commit; returns the commit URL."""
    if not token:
        raise ValueError(
            "no Hugging Face token: log in with `hf auth login`, set HF_TOKEN, or pass --token; "
            "use --dry-run to only write the folder and model card"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ValueError("HF_HUB_OFFLINE is set: unset it to push, or use --dry-run")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        revision=revision,
        commit_message="Upload checkpoint with RSA evaluation (rsa publish)",
    )
    url = getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s", folder, url)
    return url
