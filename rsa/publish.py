"""Publishing to the Hugging Face Hub: a trained checkpoint with its RSA evaluation, and a built training dataset.

`prepare_folder` builds the folder that `rsa publish` uploads: the checkpoint's model files (hard-linked
when possible, never the optimizer/scheduler/RNG state; JSON metadata as path-scrubbed copies),
`README.md` (the model card) and `eval/` (the plot images, `report.csv`, and each run's `manifest.json`,
`metrics.jsonl` and `final.json`, path-scrubbed). The card's metadata carries `base_model` (a Hub id only),
`datasets`, tags and `model-index` evaluation results (RSA Pass@1 at step 1 and at the last step, majority
vote and Pass@N, per run), which `huggingface_hub.ModelCard` parses back; its main table is compact, the
full `rsa report` table and per-step tables sit in a collapsible section.

`push_dataset` publishes a folder written by `rsa augment` (`train.parquet`, `build_report.json`,
`manifest.json`) as a dataset repository with a card that states its provenance (reference policy,
problems, sampling) and mixture (plain/aggregate rows, K, candidate-set classes, length budget).

Nothing of the publisher's machine is uploaded: models and data are named by Hub id or folder name, and
a staged folder in which a local absolute folder still occurs is refused (`rsa.hub.find_leaks`). Pushing
refuses before any work without a token or with the Hub offline (`rsa.hub.check_can_push`).

The evaluation comes from run directories written by `rsa eval` (a `manifest.json` and a `metrics.jsonl`
line per RSA step); tables and plots are those of `rsa.report`, so the card matches `rsa report`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rsa.hub import (
    check_can_push,
    find_leaks,
    hub_name,
    is_hub_id,
    local_roots,
    push_folder,
    resolve_token,
    scrub_paths,
    write_scrubbed_json,
)

__all__ = [
    "CheckpointInfo",
    "check_runs_evaluate",
    "dataset_card",
    "eval_results",
    "inspect_checkpoint",
    "model_card",
    "prepare_dataset_folder",
    "prepare_folder",
    "push_dataset",
    "push_folder",
    "resolve_token",
]

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
#: JSON files published as-is (vocabularies: their tokens are data, not paths); other JSON is path-scrubbed
VERBATIM_JSON = ("tokenizer.json", "vocab.json", "merges.json")
PROVENANCE_FILE = "rsa_training.json"  # written by rsa.grpo_setup.ProvenanceCallback
CARD_TAGS = ["rsa", "recursive-self-aggregation", "aggregation-aware-rl", "grpo", "trl"]
DATASET_TAGS = ["rsa", "recursive-self-aggregation", "aggregation-aware-rl", "grpo", "reasoning"]
EVAL_TASK = ("text-generation", "Recursive self-aggregation (RSA)")


@dataclass
class CheckpointInfo:
    """What the card says about a checkpoint: base model, adapter or full model, training settings."""

    path: Path
    is_adapter: bool
    base_model: str | None
    global_step: int | None
    training: dict


def inspect_checkpoint(checkpoint: str | Path, base_model: str | None = None) -> CheckpointInfo:
    """Read a checkpoint directory; ValueError when it holds neither a model nor a LoRA adapter.

    The base model is `base_model` if given, else the training record's `model_name_or_path`, else the
    adapter's `base_model_name_or_path`, else config.json's `_name_or_path` (each may be a local path).
    """
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
    base = base_model or (training.get("model_args") or {}).get("model_name_or_path")
    if is_adapter:
        base = base or (_read_json(path / "adapter_config.json") or {}).get("base_model_name_or_path")
    else:
        base = base or (_read_json(path / "config.json") or {}).get("_name_or_path") or None
    state = _read_json(path / "trainer_state.json") or {}
    return CheckpointInfo(path, is_adapter, base, state.get("global_step"), training)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg})") from None


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


def _stage_file(src: Path, dst: Path) -> None:
    """Stage one file: JSON metadata as a path-scrubbed copy, anything else as a hard link (or copy)."""
    if src.suffix in (".json", ".jsonl") and src.name not in VERBATIM_JSON:
        write_scrubbed_json(src, dst)
    else:
        _link_or_copy(src, dst)


def _check_no_leaks(folder: Path, *paths: str | Path) -> None:
    leaks = find_leaks(folder, local_roots(*paths))
    if leaks:
        raise ValueError(
            f"{folder}: local paths of this machine would be uploaded: {'; '.join(leaks[:10])}. "
            "Remove or rewrite these files in the source folder, then publish again"
        )


# ----- the evaluation: compact table, full tables, model-index -----------------------------------------------
def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _step_table(steps: list[dict]) -> str:
    lines = ["| step | Pass@1 | Pass@N | majority | mean length |", "|---|---|---|---|---|"]
    for s in steps:
        length = s.get("mean_length")
        lines.append(
            f"| {s['step']} | {_pct(s['pass_at_1'])} | {_pct(s['pass_at_n'])} | "
            f"{_pct(s['majority'])} | {'' if length is None else f'{length:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def _report_rows(runs: list) -> list[dict]:
    """`rsa.report.table_rows` with every model named by Hub id or folder name."""
    from rsa.report import table_rows

    rows = table_rows(runs)
    for row in rows:
        row["model"] = hub_name(row["model"])
        row["dataset"] = hub_name(row["dataset"])
    return rows


def compact_table(rows: list[dict]) -> str:
    """The card's main table: run, dataset, N/K/T, Pass@1 at step 1 and at the last step, majority, Pass@N."""
    lines = [
        "| run | dataset | N / K / T | Pass@1 step 1 | Pass@1 last step | majority last step | Pass@N last step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = f"{r['N']} / {r['K']} / {r['steps_done']}" + (f" of {r['T']}" if r["T"] != r["steps_done"] else "")
        lines.append(
            f"| {r['run']} | {r['dataset']} | {steps} | {_pct(r['pass_at_1_step1'])} | "
            f"**{_pct(r['pass_at_1_last'])}** | {_pct(r['majority_last'])} | {_pct(r['pass_at_n_last'])} |"
        )
    return "\n".join(lines) + "\n"


def _dataset_ids(spec: str | None) -> tuple[str, str, str | None]:
    """(dataset type for model-index, display name, split) for an `rsa eval` dataset spec."""
    from rsa.data import BENCHMARKS

    spec = str(spec)
    if spec in BENCHMARKS and BENCHMARKS[spec].hub:
        return BENCHMARKS[spec].hub, spec, BENCHMARKS[spec].split
    if spec.startswith("hf:"):
        repo, _, split = spec[3:].partition(":")
        return repo, repo, split or None
    name = hub_name(spec)
    return name, name, None


def eval_results(runs: list) -> list:
    """`huggingface_hub.EvalResult`s of `runs`: RSA Pass@1 at step 1 and at the last step, majority and Pass@N.

    Values are percentages. Runs that differ only in their seed are one entry, their mean (`rsa.report.group_runs`;
    the metric name says how many runs). Runs on one dataset share a model-index entry; `metric_config` tells
    them apart (`N=16,K=4,step=10`, plus `method=` for a baseline, plus the group's name when two configurations
    would otherwise share it).
    """
    from huggingface_hub import EvalResult

    from rsa.report import group_runs

    groups = group_runs(runs)
    entries = []
    for group in groups:
        cfg = group.config
        n, k, method, last = cfg.get("population"), cfg.get("k"), group.method, group.steps()
        base = f"N={n},K={k}" + ("" if method == "rsa" else f",method={method}")
        entries.append((group, base, cfg.get("dataset"), n, k, last))
    bases = [(dataset, base) for _, base, dataset, *_ in entries]
    results = []
    for group, base, dataset, n, k, last in entries:
        if bases.count((dataset, base)) > 1:  # same dataset and N/K/method, other settings: name the group
            base += f",config={group.name}"
        dataset_type, dataset_name, split = _dataset_ids(dataset)
        runs_note = "" if len(group.runs) == 1 else f", mean of {len(group.runs)} runs"
        metrics = [
            ("pass@1", f"RSA Pass@1, step 1 (plain sampling, N={n}{runs_note})", 0, "pass_at_1"),
            ("pass@1", f"RSA Pass@1, step {last} (N={n}, K={k}{runs_note})", last - 1, "pass_at_1"),
            ("majority@n", f"RSA majority vote, step {last} (N={n}, K={k}{runs_note})", last - 1, "majority"),
            ("pass@n", f"RSA Pass@N, step {last} (N={n}, K={k}{runs_note})", last - 1, "pass_at_n"),
        ]
        for metric_type, metric_name, index, key in metrics:
            value = sum(float(run.steps[index][key]) for run in group.runs) / len(group.runs)
            results.append(
                EvalResult(
                    task_type=EVAL_TASK[0],
                    task_name=EVAL_TASK[1],
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_config=f"{base},step={index + 1}",
                    metric_value=round(100 * value, 2),
                )
            )
    return results


def check_runs_evaluate(info: CheckpointInfo, runs: list, *, allow_other_model: bool = False) -> list[str]:
    """Check that every run evaluated the checkpoint: the run manifest's model revision (`sha256:` of the weight
    files, `rsa.provenance.model_revision`) equals the checkpoint's, or, when the run recorded none, its model path is
    the checkpoint. ValueError naming the run and both models otherwise; with `allow_other_model`, the mismatches
    are returned as notes for the card instead."""
    from rsa.provenance import model_revision

    checkpoint_revision = None
    notes = []
    for run in runs:
        recorded = run.manifest.get("model", {})
        model = recorded.get("path") or run.manifest.get("config", {}).get("model")
        revision = recorded.get("revision")
        if revision is not None:
            if checkpoint_revision is None:
                checkpoint_revision = model_revision(str(info.path), query_hub=False) or "unknown"
            if revision == checkpoint_revision:
                continue
            problem = f"evaluated {model} (revision {revision}), not the checkpoint {info.path} ({checkpoint_revision})"
        else:
            if model is not None and Path(str(model)).expanduser().resolve() == info.path.resolve():
                continue
            problem = f"evaluated {model} (no revision recorded), not the checkpoint {info.path}"
        if not allow_other_model:
            raise ValueError(
                f"{run.path}: {problem}; its results would be presented as this checkpoint's. Evaluate the "
                f"checkpoint (`rsa eval --model {info.path} ...`), or pass --allow-other-model to publish them "
                "anyway (the card then says which model each such run evaluated)"
            )
        logger.warning("%s: %s (--allow-other-model)", run.path, problem)
        notes.append(f"Run `{run.path.name}` evaluated `{hub_name(model)}`, not this checkpoint.")
    return notes


# ----- the model card ------------------------------------------------------------------------------------------
def _training_datasets(training: dict) -> list[str]:
    """Hub ids of the training data named in the training record (local files have none)."""
    from rsa.data import BENCHMARKS

    script = training.get("script_args") or {}
    ids = []
    if is_hub_id(script.get("dataset_name")):
        ids.append(script["dataset_name"])
    problems = str(script.get("problems") or "")
    for spec in problems.split("+") if problems and not problems.startswith("rg:") else []:
        if spec.startswith("hf:"):
            ids.append(spec[3:].partition(":")[0])
        elif spec in BENCHMARKS and BENCHMARKS[spec].hub:
            ids.append(BENCHMARKS[spec].hub)
    return list(dict.fromkeys(ids))


def _training_section(info: CheckpointInfo) -> str:
    if not info.training:
        return "No training record (`rsa_training.json`) was found next to the checkpoint.\n"
    script = info.training.get("script_args") or {}
    args = info.training.get("training_args") or {}
    data = [hub_name(f) for f in script.get("dataset_files") or []]
    data += [hub_name(script[k]) for k in ("dataset_name", "problems") if script.get(k)]
    rows = [
        ("base model", hub_name(info.base_model)),
        ("training data", ", ".join(data) or None),
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
    out += "".join(f"| {k} | {scrub_paths(str(v))} |\n" for k, v in rows if v is not None)
    if packages:
        out += "\nPackages: " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if v) + "\n"
    out += f"\nThe full record is `{PROVENANCE_FILE}` in this repository (local paths cut to folder names).\n"
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


def _usage(info: CheckpointInfo, repo_id: str, revision: str | None) -> str:
    name = repo_id.split("/")[-1]
    rev = f', revision="{revision}"' if revision else ""
    if info.is_adapter:
        base = hub_name(info.base_model) or "<base model>"
        return (
            f"\n## Usage\n\nA PEFT LoRA adapter: load it on top of `{base}`.\n\n```python\n"
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}"{rev})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")\n```\n\n'
            "For RSA evaluation with `rsa eval`, merge the adapter into the base model first "
            "(`model.merge_and_unload().save_pretrained(...)`).\n"
        )
    model, download = repo_id, ""
    if revision:  # a branch: download it, evaluate the folder
        model = f"{name}-{revision}"
        download = f"hf download {repo_id} --revision {revision} --local-dir {model}\n"
    return (
        "\n## Usage\n\nRSA evaluation with rsa-rl:\n\n```bash\n"
        + download
        + f"rsa eval --model {model} --dataset aime25 --population 16 --k 4 --steps 10 --out runs/{name}-aime25\n"
        "```\n\nThe run directories behind the tables are in `eval/` (manifest and per-step metrics).\n"
    )


def model_card(
    info: CheckpointInfo,
    runs: list,
    repo_id: str,
    license: str | None = None,
    datasets: list[str] | None = None,
    revision: str | None = None,
    notes: list[str] | None = None,
) -> str:
    """The model card (README.md): metadata with model-index, compact RSA table, plot, details, training, usage.

    `notes` (from `check_runs_evaluate`) go under the RSA table: runs that evaluated another model."""
    from huggingface_hub import ModelCardData

    from rsa.report import markdown_table

    name = repo_id.split("/")[-1]
    datasets = list(datasets) if datasets else _training_datasets(info.training)
    base = info.base_model if is_hub_id(info.base_model) else None
    data = ModelCardData(
        model_name=name,
        base_model=base,
        datasets=datasets or None,
        library_name="peft" if info.is_adapter else "transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS + (["lora", "peft"] if info.is_adapter else []),
        license=license,
        eval_results=eval_results(runs) if runs else None,
    )
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
        intro += f" This repository holds a LoRA adapter (PEFT) for `{hub_name(info.base_model) or 'its base model'}`."
    if info.global_step is not None:
        intro += f" Checkpoint after {info.global_step} optimizer steps"
        intro += f" (branch `{revision}`)." if revision else "."
    rows = _report_rows(runs)
    details = [
        "All columns of `rsa report` (accuracies in percent; `last` is the last completed step):\n",
        markdown_table(rows),
    ]
    for run in runs:
        cfg = run.manifest.get("config", {})
        details.append(
            f"\n**{run.path.name}**: {hub_name(cfg.get('dataset'))}, N={cfg.get('population')} K={cfg.get('k')} "
            f"T={cfg.get('steps')}, seed {cfg.get('seed')}\n\n" + _step_table(run.steps)
        )
    parts = [
        f"---\n{data.to_yaml()}\n---\n",
        f"# {name}\n\n{intro}\n",
        "## RSA evaluation\n\nAccuracies in percent. Step 1 is plain sampling (N independent answers); each later "
        "step aggregates K-member subsets of the previous population. Pass@1 is the mean accuracy of the "
        "population, Pass@N the share of problems with at least one correct member, majority the accuracy "
        "of the majority answer.\n",
        compact_table(rows) + "".join(f"\n**Note:** {note}\n" for note in notes or []),
        "\n![Pass@1, Pass@N and majority vote vs RSA step](eval/rsa_steps.png)\n",
        "\n<details>\n<summary>Full table and per-step results</summary>\n\n" + "\n".join(details) + "\n</details>\n",
        "\n## Training\n\n" + _training_section(info),
        _usage(info, repo_id, revision),
    ]
    return "\n".join(parts)


def prepare_folder(
    checkpoint: str | Path,
    run_dirs: list[str | Path],
    out_dir: str | Path,
    repo_id: str,
    license: str | None = None,
    *,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    revision: str | None = None,
    allow_other_model: bool = False,
) -> Path:
    """Write the upload folder (model files, README.md, eval/) into `out_dir`; returns its path.

    `base_model` names the base model's Hub id when the checkpoint only knows a local path; `datasets`
    lists the training data's Hub ids for the card (default: those in the training record). Runs of another
    model are refused (`check_runs_evaluate`) unless `allow_other_model`.
    """
    from rsa.report import csv_table, load_run, plot_runs

    if not run_dirs:
        raise ValueError("no RSA run directories given: evaluate the checkpoint with `rsa eval` first")
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(f"--base-model {base_model!r} is not a Hub id (org/name)")
    for dataset in datasets or []:
        if not is_hub_id(dataset):
            raise ValueError(f"--dataset-id {dataset!r} is not a Hub id (org/name)")
    info = inspect_checkpoint(checkpoint, base_model=base_model)
    runs = [load_run(p) for p in run_dirs]
    notes = check_runs_evaluate(info, runs, allow_other_model=allow_other_model)
    out = Path(out_dir)
    if out.resolve() == info.path.resolve():
        raise ValueError("--out must differ from the checkpoint directory")
    out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in sorted(info.path.iterdir()):
        if src.is_file() and not _excluded(src.name):
            _stage_file(src, out / src.name)
            copied += 1
    if info.is_adapter:  # PEFT loads the base named here: a Hub id, never this machine's path
        adapter = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
        adapter["base_model_name_or_path"] = hub_name(info.base_model)
        (out / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n", encoding="utf-8")
    eval_dir = out / "eval"
    eval_dir.mkdir(exist_ok=True)
    plot_runs(runs, eval_dir)
    (eval_dir / "report.csv").write_text(csv_table(_report_rows(runs)), encoding="utf-8")
    for run in runs:
        for name in ("manifest.json", "metrics.jsonl", "final.json"):
            if (run.path / name).is_file():
                write_scrubbed_json(run.path / name, eval_dir / run.path.name / name)
    card = model_card(info, runs, repo_id, license, datasets=datasets, revision=revision, notes=notes)
    (out / "README.md").write_text(card, encoding="utf-8")
    _check_no_leaks(out, info.path, out, *run_dirs)
    logger.info("publish folder %s: %d model files, %d evaluation run(s)", out, copied, len(runs))
    return out


# ----- a training dataset built by `rsa augment` ---------------------------------------------------------------
def _scrub_parquet(src: Path, dst: Path) -> None:
    """Copy a parquet file, cutting local paths in its `reference_model` / `dataset_name` columns to names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(src)
    changed = False
    for column in ("reference_model", "dataset_name"):
        if column not in table.column_names:
            continue
        values = table.column(column).to_pylist()
        scrubbed = [hub_name(v) if isinstance(v, str) and v.startswith(("/", "~")) else v for v in values]
        if scrubbed != values:
            index = table.column_names.index(column)
            table = table.set_column(index, column, pa.array(scrubbed, type=table.schema.field(column).type))
            changed = True
    if changed:
        dst.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, dst)
    else:
        _link_or_copy(src, dst)


def _fraction(value) -> str:
    return "" if value is None else f"{value:.3f}"


def dataset_card(manifest: dict, report: dict, repo_id: str, columns: list[str], license: str | None = None) -> str:
    """The dataset card (README.md) of an `rsa augment` folder: metadata, provenance, mixture, columns, usage."""
    from huggingface_hub import DatasetCardData

    from rsa.augment import CLASSES

    candidates = manifest.get("candidates") or {}
    mix = (manifest.get("last_build") or {}).get("mix") or {}
    reference = hub_name(candidates.get("model"))
    problems_spec = candidates.get("dataset")
    source_ids = [i for i in [_dataset_ids(problems_spec)[0]] if problems_spec and is_hub_id(i)]
    rows = report.get("rows", report.get("plain", 0) + report.get("aggregate", 0))
    data = DatasetCardData(
        license=license,
        task_categories=["text-generation"],
        tags=DATASET_TAGS,
        source_datasets=source_ids or None,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "train.parquet"}]}],
    )
    name = repo_id.split("/")[-1]
    parts = [f"---\n{data.to_yaml()}\n---\n", f"# {name}\n"]
    if "source" in report:  # imported from a verl-layout file
        kinds = ", ".join(f"{k} {v}" for k, v in sorted((report.get("kinds") or {}).items()))
        tasks = ", ".join(f"{k} {v}" for k, v in sorted((report.get("tasks") or {}).items()))
        parts.append(
            f"Training rows for aggregation-aware RL, converted by `rsa augment --import` (rsa-rl) from "
            f"`{hub_name(report['source'])}` (verl layout) to the rsa-rl columns.\n\n"
            f"| | |\n|---|---|\n| rows | {rows} |\n| kinds | {kinds} |\n| tasks | {tasks} |\n"
            f"| prompt limit (tokens) | {report.get('prompt_limit')} |\n"
            f"| rows dropped over the limit | {report.get('dropped_over_budget', 0)} |\n"
        )
    else:
        parts.append(
            "Training rows for aggregation-aware RL, built by `rsa augment` (rsa-rl): M candidate solutions "
            "were sampled once per problem from the reference policy and scored; each aggregation prompt "
            "holds K of them, and plain prompts (the question alone) are mixed in.\n"
        )
        provenance = [
            ("reference policy", reference),
            ("problems", f"{hub_name(problems_spec)} ({(manifest.get('problems') or {}).get('count')} problems)"),
            ("problems sha256", (manifest.get("problems") or {}).get("sha256")),
            ("candidates per problem (M)", candidates.get("num_candidates")),
            ("temperature / top-p", f"{candidates.get('temperature')} / {candidates.get('top_p')}"),
            ("candidate max tokens", candidates.get("candidate_max_tokens")),
            ("sampling seed", candidates.get("seed")),
            ("engine", candidates.get("engine")),
            ("prompt version", manifest.get("prompt_version")),
            ("built", manifest.get("created")),
        ]
        parts.append(
            "## Provenance\n\n| | |\n|---|---|\n"
            + "".join(f"| {k} | {scrub_paths(str(v))} |\n" for k, v in provenance if v is not None)
        )
        classes = report.get("classes") or {}
        fractions = report.get("class_fractions") or {}
        targets = report.get("class_targets") or {}
        mixture = [
            ("rows", f"{rows} ({report.get('plain', 0)} plain, {report.get('aggregate', 0)} aggregate)"),
            (
                "aggregate fraction",
                f"{_fraction(report.get('aggregate_fraction'))} "
                f"(target {_fraction(report.get('aggregate_fraction_target'))})",
            ),
            ("K (candidates per aggregation prompt)", mix.get("k")),
            ("aggregation prompts per problem", mix.get("sets_per_problem")),
            ("balance target", mix.get("balance") or "none"),
            ("mixture seed", mix.get("seed")),
            ("max model length / completion", f"{mix.get('max_model_len')} / {mix.get('max_completion_length')}"),
            ("prompt limit (tokens)", report.get("prompt_limit")),
            ("prompts with capped candidates", report.get("capped_prompts")),
            ("sets dropped as over budget", report.get("dropped_over_budget")),
        ]
        parts.append(
            "## Mixture\n\n| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in mixture if v is not None)
        )
        if report.get("aggregate"):
            lines = ["| class | sets | fraction | target |", "|---|---|---|---|"]
            for c in CLASSES:
                target = _fraction(targets.get(c)) if targets else ""
                lines.append(f"| {c} | {classes.get(c, 0)} | {_fraction(fractions.get(c, 0.0))} | {target} |")
            parts.append(
                "Candidate sets by class (AggLM): *easy* when the set's majority answer is right, *hard* when the "
                "majority is wrong but a candidate is right, *all_wrong* otherwise.\n\n" + "\n".join(lines) + "\n"
            )
        for warning in report.get("warnings") or []:
            parts.append(f"> {scrub_paths(warning)}\n")
    if report.get("histogram"):
        parts.append(
            "<details>\n<summary>Prompt length histogram</summary>\n\n```\n"
            + scrub_paths(report["histogram"])
            + "\n```\n</details>\n"
        )
    parts.append("## Columns\n\n" + ", ".join(f"`{c}`" for c in columns) + " (see rsa-rl docs/FORMATS.md).\n")
    parts.append(
        "## Usage\n\nIn a training recipe (`train/grpo_agg.py`):\n\n```yaml\n"
        f'dataset_name: {repo_id}\n```\n\nor `datasets.load_dataset("{repo_id}", split="train")`. '
        "`manifest.json` and `build_report.json` are the build's own records (local paths cut to names).\n"
    )
    return "\n".join(parts)


def prepare_dataset_folder(folder: str | Path, out_dir: str | Path, repo_id: str, license: str | None = None) -> Path:
    """Stage an `rsa augment` output folder for upload: train.parquet, scrubbed records, README.md (the card)."""
    import pyarrow.parquet as pq

    from rsa.augment import DATASET_FILE, MANIFEST, REPORT_FILE

    folder, out = Path(folder), Path(out_dir)
    if not (folder / DATASET_FILE).is_file():
        raise ValueError(f"{folder}: no {DATASET_FILE}; build the dataset with `rsa augment --out {folder}` first")
    if not (folder / REPORT_FILE).is_file():
        raise ValueError(f"{folder}: no {REPORT_FILE}; the build did not finish, run `rsa augment --resume` again")
    if out.resolve() == folder.resolve():
        raise ValueError("the staging folder must differ from the dataset folder")
    out.mkdir(parents=True, exist_ok=True)
    _scrub_parquet(folder / DATASET_FILE, out / DATASET_FILE)
    for name in (MANIFEST, REPORT_FILE):
        if (folder / name).is_file():
            write_scrubbed_json(folder / name, out / name)
    manifest = _read_json(out / MANIFEST) or {}
    report = _read_json(out / REPORT_FILE) or {}
    columns = pq.read_schema(out / DATASET_FILE).names
    (out / "README.md").write_text(dataset_card(manifest, report, repo_id, columns, license), encoding="utf-8")
    _check_no_leaks(out, folder, out)
    logger.info("dataset folder %s staged for %s", out, repo_id)
    return out


def push_dataset(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    out_dir: str | Path | None = None,
    license: str | None = None,
    dry_run: bool = False,
) -> str:
    """Push the `rsa augment` output `folder` as the dataset repository `repo_id`, with its card.

    Stages the upload in `out_dir` (default: `hub-<folder name>` beside `folder`). Refuses before any work
    without a token or with the Hub offline, unless `dry_run`. Returns the commit URL, or the staged folder
    when `dry_run`.
    """
    if not dry_run:
        token = check_can_push(token)
    folder = Path(folder)
    out = Path(out_dir) if out_dir else folder.resolve().parent / f"hub-{folder.resolve().name}"
    staged = prepare_dataset_folder(folder, out, repo_id, license=license)
    if dry_run:
        return str(staged)
    return push_folder(
        staged,
        repo_id,
        token,
        repo_type="dataset",
        private=private,
        revision=revision,
        commit_message="Upload aggregation-aware RL dataset (rsa augment)",
    )
