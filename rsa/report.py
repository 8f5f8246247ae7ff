"""Reports over run directories: a table (Markdown and CSV) and the paper's metric-vs-step plots.

The table has one row per run: model, method, N/K/T, problems, and Pass@1, Pass@N and majority-vote
accuracy at step 1 and at the last completed step. The plots show Pass@1, Pass@N and majority vote
against the RSA step, one line per run (three panels in `rsa_steps.png`, and one PNG per metric).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from rsa.jsonl import write_text_atomic
from rsa.runs import FINAL, MANIFEST, RunDirectory

logger = logging.getLogger(__name__)

PLOTTED = (("pass_at_1", "Pass@1"), ("pass_at_n", "Pass@N"), ("majority", "Majority vote"))
COLUMNS = (
    "run", "model", "method", "dataset", "N", "K", "T", "steps_done", "problems",
    "pass_at_1_step1", "pass_at_1_last", "pass_at_n_step1", "pass_at_n_last",
    "majority_step1", "majority_last", "final_accuracy", "tokens_generated",
)  # fmt: skip


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    path: Path
    label: str
    manifest: dict
    steps: list[dict]
    final_accuracy: float | None


def load_run(path: str | Path) -> RunSummary:
    """Read a run directory's manifest, committed steps and final accuracy; ValueError when it is not a run."""
    run_dir = RunDirectory(path)
    if not (run_dir.path / MANIFEST).is_file():
        raise ValueError(f"{path}: not a run directory (no {MANIFEST})")
    manifest = run_dir.manifest
    steps = run_dir.completed_steps()
    if not steps:
        raise ValueError(f"{path}: the run has no completed step yet")
    final = None
    if (run_dir.path / FINAL).is_file():
        import json

        final = json.loads((run_dir.path / FINAL).read_text(encoding="utf-8")).get("accuracy")
    config = manifest.get("config", {})
    model = Path(str(config.get("model", "?"))).name or str(config.get("model"))
    label = f"{run_dir.path.name} ({model}, {config.get('method', 'rsa')})"
    return RunSummary(run_dir.path, label, manifest, steps, final)


def table_rows(runs: list[RunSummary]) -> list[dict]:
    """One table row per run (see COLUMNS)."""
    rows = []
    for run in runs:
        cfg = run.manifest.get("config", {})
        first, last = run.steps[0], run.steps[-1]
        rows.append(
            {
                "run": run.path.name,
                "model": cfg.get("model"),
                "method": cfg.get("method", "rsa"),
                "dataset": cfg.get("dataset"),
                "N": cfg.get("population"),
                "K": cfg.get("k"),
                "T": cfg.get("steps"),
                "steps_done": last["step"],
                "problems": last.get("num_problems"),
                "pass_at_1_step1": first["pass_at_1"],
                "pass_at_1_last": last["pass_at_1"],
                "pass_at_n_step1": first["pass_at_n"],
                "pass_at_n_last": last["pass_at_n"],
                "majority_step1": first["majority"],
                "majority_last": last["majority"],
                "final_accuracy": run.final_accuracy,
                "tokens_generated": sum(s.get("tokens_generated", 0) for s in run.steps),
            }
        )
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{100 * value:.1f}" if value <= 1.0 else f"{value:.0f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict]) -> str:
    """The table in Markdown; accuracies in percent."""
    out = io.StringIO()
    out.write("| " + " | ".join(COLUMNS) + " |\n")
    out.write("|" + "|".join("---" for _ in COLUMNS) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in COLUMNS) + " |\n")
    return out.getvalue()


def csv_table(rows: list[dict]) -> str:
    """The table as CSV; accuracies as fractions."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_runs(runs: list[RunSummary], out_dir: Path) -> list[Path]:
    """Draw Pass@1, Pass@N and majority vs step, one line per run; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4), squeeze=False)
    for ax, (key, title) in zip(axes[0], PLOTTED):
        _draw(ax, runs, key, title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(runs)), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(runs) - 1) // 3), 1, 1))
    written.append(_save(fig, out_dir / "rsa_steps.png"))
    plt.close(fig)
    for key, title in PLOTTED:
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, runs, key, title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{key}.png"))
        plt.close(fig)
    return written


def _draw(ax, runs: list[RunSummary], key: str, title: str) -> None:
    values = []
    for run in runs:
        steps = [s["step"] for s in run.steps]
        values += [100 * s[key] for s in run.steps]
        ax.plot(steps, [100 * s[key] for s in run.steps], marker="o", markersize=3, label=run.label)
    low, high = min(values), max(values)
    pad = max(2.0, 0.1 * (high - low))
    ax.set_ylim(max(-1.5, low - pad), min(101.5, high + pad))  # accuracies live in [0, 100]
    ax.set_title(title)
    ax.set_xlabel("RSA step")
    ax.set_ylabel(f"{title} (%)")
    ax.grid(alpha=0.3)
    max_step = max(len(r.steps) for r in runs)
    ax.set_xticks(range(1, max_step + 1) if max_step <= 20 else ax.get_xticks())


def group_figure(groups: dict[str, list[RunSummary]], keys=PLOTTED):
    """A figure with one panel per metric (shared y-axis, in percent) and one line per group of runs: the mean
    over the group's runs at each step, with a band of ± one standard deviation (none for a single run), one
    colour per group. Groups are, for example, the arms of an experiment with their seeds pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, (key, title) in zip(axes[0], keys):
        for index, (name, runs) in enumerate(groups.items()):
            steps = min(len(run.steps) for run in runs)
            values = 100 * np.array([[run.steps[i][key] for i in range(steps)] for run in runs])
            mean, std = values.mean(axis=0), values.std(axis=0)
            x = np.arange(1, steps + 1)
            ax.plot(x, mean, marker="o", markersize=3, color=colours(index % 10), label=f"{name} ({len(runs)} runs)")
            if len(runs) > 1:
                ax.fill_between(x, mean - std, mean + std, color=colours(index % 10), alpha=0.15, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("RSA step")
        ax.grid(alpha=0.3)
        ax.set_xticks(range(1, 1 + max(min(len(r.steps) for r in runs) for runs in groups.values())))
    axes[0][0].set_ylabel("accuracy (%), mean ± std over runs")
    axes[0][0].set_ylim(0, 100)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(groups)), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * ((len(groups) - 1) // 3), 1, 1))
    return fig


def write_group_plot(groups: dict[str, list[RunSummary]], path: str | Path) -> Path:
    """Save `group_figure(groups)` as a PNG at `path` (atomically); returns the path."""
    import matplotlib.pyplot as plt

    fig = group_figure(groups)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=120, format="png")
    tmp.replace(path)
    return path


def write_report(run_paths: list[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Write `report.md`, `report.csv` and the plots for `run_paths` into `out_dir`; returns the paths."""
    if not run_paths:
        raise ValueError("no run directories given")
    runs = [load_run(p) for p in run_paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs)
    markdown = "# RSA report\n\nAccuracies in percent; step 1 is plain sampling, `last` the last completed step.\n\n"
    markdown += markdown_table(rows)
    markdown += "\n![Pass@1, Pass@N and majority vote vs RSA step](rsa_steps.png)\n"
    write_text_atomic(out_dir / "report.md", markdown)
    write_text_atomic(out_dir / "report.csv", csv_table(rows))
    plots = plot_runs(runs, out_dir)
    logger.info("report written to %s", out_dir)
    return {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv", **{p.stem: p for p in plots}}
