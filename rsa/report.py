"""Reports over run directories: runs grouped by configuration, tables (Markdown and CSV) and plots.

Runs that differ only in their seed form one group (`group_runs`): the manifest's config without `seed` and the
operational keys (`rsa.runs.OPERATIONAL_KEYS`), with the model identified by its path and revision, or, for a
model folder holding a training record (`rsa_training.json`), by that record without the training seed and
paths, so that models trained with different seeds pool too. A model folder named `checkpoint-<step>` keeps its
training step in the key.

Tables: one row per group with mean ± std over its runs (`report.md`, `groups.csv`), bootstrap intervals
(`rsa.stats.paired_bootstrap`: each group's gain from step 1 to its last step, and each group against the first
on the same problems), and one row per run (`report.csv`). Every accuracy is in percent, in every file, and
every column that holds one says `(%)`.

Plots (`rsa_steps.png`): Pass@1, Pass@N and majority vote against the RSA step, one panel each on one shared
y-axis, one line per group (its mean) with a band of ± one std, one colour, marker and line style per group, the
legend outside the panels. Groups of the `majority` baseline are drawn against samples per problem (N x t) in a
panel of their own. Groups evaluated at several training checkpoints also get `by_training_step.png`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rsa.jsonl import read_jsonl, write_text_atomic
from rsa.runs import FINAL, MANIFEST, OPERATIONAL_KEYS, PER_PROBLEM_DIR, RunDirectory
from rsa.stats import paired_bootstrap, spread

logger = logging.getLogger(__name__)

PLOTTED = (("pass_at_1", "Pass@1"), ("pass_at_n", "Pass@N"), ("majority", "Majority vote"))
#: (row key, column name) of the per-run table; every accuracy column is in percent and says so
COLUMNS = (
    ("run", "run"), ("model", "model"), ("method", "method"), ("dataset", "dataset"), ("seed", "seed"),
    ("N", "N"), ("K", "K"), ("T", "T"), ("steps_done", "steps_done"), ("problems", "problems"),
    ("pass_at_1_step1", "pass@1 step 1 (%)"), ("pass_at_1_last", "pass@1 last (%)"),
    ("pass_at_n_step1", "pass@N step 1 (%)"), ("pass_at_n_last", "pass@N last (%)"),
    ("majority_step1", "majority step 1 (%)"), ("majority_last", "majority last (%)"),
    ("final_rule", "final rule"), ("final_accuracy", "final answer (%)"), ("tokens_generated", "tokens_generated"),
)  # fmt: skip
PERCENT_KEYS = frozenset(key for key, name in COLUMNS if name.endswith("(%)"))
#: config keys that tell runs of one configuration apart
SEED_KEYS = frozenset({"seed"})
#: the training record next to a trained model (rsa.training's ProvenanceCallback writes it)
TRAINING_RECORD = "rsa_training.json"
#: training-record fields that differ between seeds of one training configuration
TRAINING_SEED_FIELDS = {
    "training_args": ("seed", "data_seed", "output_dir", "run_name", "logging_dir", "hub_model_id"),
    None: ("argv",),
}
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
#: what the final answer of each rule is, for the tables' note
FINAL_RULES = {"random": "one random member of the last population", "majority": "the last population's vote"}


class IncompleteRunError(ValueError):
    """A run directory whose evaluation has not finished (no `final.json`)."""


@dataclass
class RunSummary:
    """What the report needs from one run directory."""

    path: Path
    label: str
    manifest: dict
    steps: list[dict]
    final_accuracy: float | None
    final_rule: str | None = None

    @property
    def config(self) -> dict:
        """The manifest's config section."""
        return self.manifest.get("config", {})

    @property
    def seed(self):
        """The run seed."""
        return self.config.get("seed")


def load_run(path: str | Path, *, require_final: bool = False) -> RunSummary:
    """Read a run directory's manifest, committed steps and final answer.

    ValueError when it is not a run; IncompleteRunError when it has no completed step, or, with `require_final`,
    when it has not finished.
    """
    run_dir = RunDirectory(path)
    if not (run_dir.path / MANIFEST).is_file():
        raise ValueError(f"{path}: not a run directory (no {MANIFEST})")
    manifest = run_dir.manifest
    steps = run_dir.completed_steps()
    config = manifest.get("config", {})
    if not steps or (require_final and not (run_dir.path / FINAL).is_file()):
        raise IncompleteRunError(
            f"{path}: unfinished run ({len(steps)} of {config.get('steps', '?')} steps, no {FINAL}); finish it with "
            f"`rsa eval --resume --out {path} ...`, or pass --skip-incomplete to report without it"
        )
    final, rule = None, None
    if (run_dir.path / FINAL).is_file():
        record = json.loads((run_dir.path / FINAL).read_text(encoding="utf-8"))
        final, rule = record.get("accuracy"), record.get("rule")
    model = Path(str(config.get("model", "?"))).name or str(config.get("model"))
    label = f"{run_dir.path.name} ({model}, {config.get('method', 'rsa')})"
    return RunSummary(run_dir.path, label, manifest, steps, final, rule or config.get("final"))


def discover_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named by `paths`: a run directory itself, or a folder whose subfolders holding a
    `manifest.json` are runs (in natural order: `checkpoint-2` before `checkpoint-10`); ValueError otherwise."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / MANIFEST).is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise ValueError(f"{path}: not a run directory (no {MANIFEST}) and not a folder of runs")
        runs = sorted((p for p in path.iterdir() if (p / MANIFEST).is_file()), key=lambda p: _natural(p.name))
        if not runs:
            raise ValueError(f"{path}: not a run directory (no {MANIFEST}), and no subfolder holds one")
        found += runs
    if not found:
        raise ValueError("no run directories given")
    return found


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_runs(paths: Sequence[str | Path], *, skip_incomplete: bool = False) -> tuple[list[RunSummary], list[str]]:
    """The finished runs among `discover_runs(paths)`, and the reasons of those left out (only with
    `skip_incomplete`; without it the first unfinished run raises IncompleteRunError)."""
    runs, skipped = [], []
    for path in discover_runs(paths):
        try:
            runs.append(load_run(path, require_final=True))
        except IncompleteRunError as exc:
            if not skip_incomplete:
                raise
            logger.warning("skipped: %s", str(exc).split(";")[0])
            skipped.append(str(exc).split(";")[0])
    if not runs:
        raise ValueError("no finished run to report" + (f" ({len(skipped)} unfinished skipped)" if skipped else ""))
    return runs, skipped


# ----- grouping -----------------------------------------------------------------------------------------------
def checkpoint_step(model: str | None) -> int | None:
    """The training step of a model folder named `checkpoint-<step>`, else None."""
    match = CHECKPOINT.search(Path(str(model or "")).name)
    return int(match.group(1)) if match else None


def model_identity(manifest: dict) -> dict:
    """What identifies a run's model for grouping: its training record without the seed-specific fields (and
    its checkpoint step) when the model folder holds one, else its path and revision."""
    path = str(manifest.get("model", {}).get("path") or manifest.get("config", {}).get("model"))
    record_file = Path(path) / TRAINING_RECORD
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("%s: unreadable (%s); the model is identified by its path", record_file, exc)
        else:
            for section, keys in TRAINING_SEED_FIELDS.items():
                target = record if section is None else record.get(section, {})
                for key in keys:
                    target.pop(key, None)
            return {"training": record, "checkpoint_step": checkpoint_step(path)}
    return {"path": path, "revision": manifest.get("model", {}).get("revision")}


def config_key(run: RunSummary) -> str:
    """The run's configuration with the seed aside: runs with equal keys are one group."""
    config = {k: v for k, v in run.config.items() if k not in SEED_KEYS and k not in OPERATIONAL_KEYS}
    config["model"] = model_identity(run.manifest)
    config["problems"] = run.manifest.get("problems", {}).get("sha256")
    return json.dumps(config, sort_keys=True, default=str)


@dataclass
class Group:
    """Runs of one configuration that differ in their seed (sorted by seed)."""

    name: str
    runs: list[RunSummary]
    key: str = ""
    colour: object = None
    style: dict = field(default_factory=dict)

    @property
    def config(self) -> dict:
        """The first run's config (equal across the group but for the seed)."""
        return self.runs[0].config

    @property
    def method(self) -> str:
        """The group's method (`rsa` or a baseline)."""
        return self.config.get("method", "rsa")

    @property
    def seeds(self) -> list:
        """The runs' seeds."""
        return [run.seed for run in self.runs]

    @property
    def training_step(self) -> int | None:
        """The training step of the group's checkpoint (None when the model is not a `checkpoint-<step>`)."""
        return checkpoint_step(self.runs[0].manifest.get("model", {}).get("path") or self.config.get("model"))

    def steps(self) -> int:
        """The number of RSA steps every run of the group has completed."""
        return min(len(run.steps) for run in self.runs)


def _model_name(runs: Sequence[RunSummary]) -> str:
    return _common_name([Path(str(run.config.get("model", "?"))).name for run in runs])


def _common_name(names: Sequence[str]) -> str:
    names = sorted(set(names), key=_natural)
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)  # training seeds pooled: `standard-t0`, `standard-t1` -> `standard-t*`
    return f"{prefix}*" if prefix else " | ".join(names)


def group_runs(runs: Sequence[RunSummary], names: Mapping[Path, str] | None = None) -> list[Group]:
    """Group `runs` by `config_key`, in order of first appearance.

    A group is named by what tells it apart from the others (the model folder name, and `key=value` for the other
    config keys that differ), or by `names` (run path -> name) when all its runs have the same name there.
    """
    keyed: dict[str, list[RunSummary]] = {}
    for run in runs:
        keyed.setdefault(config_key(run), []).append(run)
    groups = [Group("", sorted(members, key=lambda r: str(r.seed)), key) for key, members in keyed.items()]
    shown = [
        {k: v for k, v in g.config.items() if k not in SEED_KEYS and k not in OPERATIONAL_KEYS and k != "model"}
        for g in groups
    ]
    differing = sorted(k for k in set().union(*shown) if len({json.dumps(s.get(k), default=str) for s in shown}) > 1)
    for group, values in zip(groups, shown):
        given = {names.get(run.path) for run in group.runs} if names else set()
        if len(given) == 1 and None not in given:
            group.name = given.pop()
            continue
        parts = [_model_name(group.runs)] + [f"{k}={values.get(k)}" for k in differing]
        if len(groups) == 1 and "method" not in differing:
            parts.append(group.method)
        group.name = ", ".join(parts)
    _style(groups)
    return groups


def _style(groups: list[Group]) -> None:
    """One colour per group (tab10 up to ten groups, else evenly spaced on a colormap, so none repeats) and a
    marker / line style per group, so that identical curves stay visible on top of each other."""
    import matplotlib

    if len(groups) <= 10:
        colours = [matplotlib.colormaps["tab10"](i) for i in range(len(groups))]
    else:
        cmap = matplotlib.colormaps["turbo"]
        colours = [cmap(0.05 + 0.9 * i / (len(groups) - 1)) for i in range(len(groups))]
    markers, lines = "osD^vPX*<>", ("-", "--", "-.", ":")
    for i, group in enumerate(groups):
        group.colour = colours[i]
        group.style = {"marker": markers[i % len(markers)], "linestyle": lines[i % len(lines)]}


# ----- tables -------------------------------------------------------------------------------------------------
def table_rows(runs: list[RunSummary]) -> list[dict]:
    """One table row per run (keys: see COLUMNS); accuracies as fractions."""
    rows = []
    for run in runs:
        cfg = run.config
        first, last = run.steps[0], run.steps[-1]
        rows.append(
            {
                "run": run.path.name,
                "model": cfg.get("model"),
                "method": cfg.get("method", "rsa"),
                "dataset": cfg.get("dataset"),
                "seed": cfg.get("seed"),
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
                "final_rule": run.final_rule,
                "final_accuracy": run.final_accuracy,
                "tokens_generated": sum(s.get("tokens_generated", 0) for s in run.steps),
            }
        )
    return rows


def _percent(row: dict) -> dict:
    """`row` with its accuracy fields (PERCENT_KEYS) in percent, rounded to 0.01."""
    return {k: round(100 * v, 2) if k in PERCENT_KEYS and v is not None else v for k, v in row.items()}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    """The per-run table in Markdown; accuracies in percent (the columns that say `(%)`)."""
    out = io.StringIO()
    out.write("| " + " | ".join(name for _, name in COLUMNS) + " |\n")
    out.write("|" + "|".join("---" for _ in COLUMNS) + "|\n")
    for row in map(_percent, rows):
        out.write("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |\n")
    return out.getvalue()


def csv_table(rows: list[dict]) -> str:
    """The per-run table as CSV, with the Markdown table's column names and units (accuracies in percent)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for _, name in COLUMNS])
    for row in map(_percent, rows):
        writer.writerow(["" if row.get(key) is None else row.get(key) for key, _ in COLUMNS])
    return out.getvalue()


#: (metric, step) cells of the group table: step 1 and the group's last step
GROUP_METRICS = (
    ("pass_at_1", "first"), ("pass_at_1", "last"), ("tokens", None), ("pass_at_n", "last"), ("majority", "last"),
    ("final", None),
)  # fmt: skip
_METRIC_NAMES = {"pass_at_1": "pass@1", "pass_at_n": "pass@N", "majority": "majority", "final": "final answer"}
#: the cost column, next to Pass@1: tokens generated over all steps, per problem
TOKENS_COLUMN = "tokens per problem"


def _group_values(group: Group, metric: str, where: str | None) -> list[float]:
    if metric == "final":
        return [100 * r.final_accuracy for r in group.runs if r.final_accuracy is not None]
    if metric == "tokens":  # what the run cost: early stopping and the budget-matched baselines differ here
        return [
            sum(s.get("tokens_generated", 0) for s in run.steps) / max(1, run.steps[-1].get("num_problems") or 1)
            for run in group.runs
        ]
    index = 0 if where == "first" else group.steps() - 1
    return [100 * run.steps[index][metric] for run in group.runs]


def _group_column(group: Group, metric: str, where: str | None) -> str:
    if metric == "tokens":
        return TOKENS_COLUMN
    if metric == "final":
        return f"{_METRIC_NAMES[metric]} (%)"
    step = 1 if where == "first" else "T"
    return f"{_METRIC_NAMES[metric]} step {step} (%)"


def _final_rule(group: Group) -> str | None:
    rule = group.runs[0].final_rule
    if group.method == "majority" and rule == "random":  # `--final random` is the default whatever the method
        return "random (one member, not the vote)"
    return rule


def group_rows(groups: list[Group]) -> list[dict]:
    """One row per group: its configuration and, per metric, mean and std over its runs in percent."""
    rows = []
    for group in groups:
        cfg = group.config
        row = {
            "group": group.name,
            "runs": len(group.runs),
            "seeds": " ".join(str(s) for s in sorted(set(group.seeds), key=str)),
            "models": len(
                {str(run.manifest.get("model", {}).get("path") or run.config.get("model")) for run in group.runs}
            ),
            "method": group.method,
            "dataset": cfg.get("dataset"),
            "N": cfg.get("population"),
            "K": cfg.get("k"),
            "T": group.steps(),
            "final rule": _final_rule(group),
        }
        for metric, where in GROUP_METRICS:
            values = _group_values(group, metric, where)
            column = _group_column(group, metric, where)
            summary = spread(values) if values else None
            row[f"{column} mean"] = None if summary is None else round(summary.mean, 2)
            row[f"{column} std"] = None if summary is None else round(summary.std, 2)
        rows.append(row)
    return rows


def group_markdown(rows: list[dict]) -> str:
    """The group table in Markdown: `mean ± std` (percent) per metric."""
    if not rows:
        return ""
    plain = [k for k in rows[0] if not k.endswith((" mean", " std"))]
    metrics = [k[: -len(" mean")] for k in rows[0] if k.endswith(" mean")]
    out = io.StringIO()
    out.write("| " + " | ".join(plain + metrics) + " |\n")
    out.write("|" + "|".join("---" for _ in plain + metrics) + "|\n")
    for row in rows:
        cells = [_cell(row[k]) for k in plain]
        for m in metrics:
            mean, std = row[f"{m} mean"], row[f"{m} std"]
            cells.append("" if mean is None else f"{mean:.1f}" if row["runs"] == 1 else f"{mean:.1f} ± {std:.1f}")
        out.write("| " + " | ".join(cells) + " |\n")
    return out.getvalue()


def group_csv(rows: list[dict]) -> str:
    """The group table as CSV: the Markdown table's columns, each metric split into `mean` and `std` (percent)."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def problem_matrix(group: Group, step: int, metric: str = "pass_at_1"):
    """A (runs, problems) array of `metric` at `step` from the runs' per-problem files, problems in the order of
    the first run's `problems.jsonl`."""
    import numpy as np

    rows = []
    order = None
    for run in group.runs:
        records = {
            str(r["problem_id"]): r[metric] for r in read_jsonl(RunDirectory(run.path).step_file(PER_PROBLEM_DIR, step))
        }
        if order is None:
            order = sorted(records)
        rows.append([records[pid] for pid in order])
    return np.asarray(rows, dtype=float)


@dataclass
class Interval:
    """One bootstrap comparison line of the report."""

    what: str
    comparison: object
    paired: bool


def intervals(groups: list[Group], resamples: int = 2000) -> list[Interval]:
    """Bootstrap intervals of Pass@1 (`rsa.stats.paired_bootstrap`, 95%, in points of percent): each group's
    gain from step 1 to its last step (paired runs), and each group against the first group at the last step,
    when both ran on the same problems (runs paired when their seeds match, else resampled independently)."""
    out = []
    reference = groups[0] if groups else None
    for group in groups:
        last = group.steps()
        if last > 1 and group.method not in ("sample", "majority"):  # their steps are rounds, not aggregations
            c = paired_bootstrap(problem_matrix(group, 1), problem_matrix(group, last), resamples=resamples)
            out.append(Interval(f"{group.name}: step {last} - step 1", _scaled(c), True))
    for group in groups[1:]:
        if group.config.get("dataset") is None or _problems(group) != _problems(reference):
            continue
        step_a, step_b = reference.steps(), group.steps()
        paired = reference.seeds == group.seeds
        c = paired_bootstrap(
            problem_matrix(reference, step_a), problem_matrix(group, step_b), resamples=resamples, pair_runs=paired
        )
        out.append(Interval(f"{group.name} (step {step_b}) - {reference.name} (step {step_a})", _scaled(c), paired))
    return out


def _problems(group: Group):
    return group.runs[0].manifest.get("problems", {}).get("sha256")


def _scaled(c):
    from rsa.stats import Comparison

    return Comparison(100 * c.difference, 100 * c.low, 100 * c.high, c.share_not_better, c.level)


def intervals_markdown(lines: list[Interval]) -> str:
    """The intervals as a Markdown table (points of percent)."""
    if not lines:
        return ""
    out = ["| comparison | difference (points) | 95% interval | runs | verdict |", "|---|---|---|---|---|"]
    for line in lines:
        c = line.comparison
        out.append(
            f"| {line.what} | {c.difference:+.1f} | [{c.low:+.1f}, {c.high:+.1f}] | "
            f"{'paired' if line.paired else 'unpaired'} | {c.verdict} |"
        )
    return "\n".join(out) + "\n"


# ----- plots --------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(group: Group, key: str):
    """x (RSA step, or samples per problem N x t for the majority baseline), mean and std in percent."""
    import numpy as np

    steps = group.steps()
    values = 100 * np.array([[run.steps[i][key] for i in range(steps)] for run in group.runs])
    x = np.arange(1, steps + 1)
    if group.method == "majority":
        x = x * int(group.config.get("population") or 1)
    std = values.std(axis=0, ddof=1) if len(group.runs) > 1 else np.zeros(steps)
    return x, values.mean(axis=0), std


def _draw_group(ax, group: Group, x, mean, std) -> None:
    label = f"{group.name} ({len(group.runs)} run{'s' if len(group.runs) != 1 else ''})"
    ax.plot(x, mean, color=group.colour, markersize=4, label=label, **group.style)
    if len(group.runs) > 1:
        ax.fill_between(x, mean - std, mean + std, color=group.colour, alpha=0.15, linewidth=0)


def _y_limits(axes, highs: list[float]) -> None:
    """One y-scale for all panels: 0 to a little above the highest mean + std, at least 5% (an all-zero run gets
    0..5 rather than a range around zero), at most 102 (so that 100% is not drawn on the frame)."""
    top = max(highs, default=0.0)
    top = min(102.0, max(5.0, top + max(2.0, 0.05 * top)))  # 102: a line at 100% stays visible
    for ax in axes:
        ax.set_ylim(0.0, top)


def group_figure(groups: dict[str, list[RunSummary]] | list[Group], keys=PLOTTED):
    """A figure with one panel per metric (one shared y-axis, in percent) and one line per group: its mean over
    the group's runs at each RSA step, with a band of ± one std (none for a single run), one colour, marker and
    line style per group, the legend outside the panels. Groups of the `majority` baseline go into an extra panel
    against samples per problem (N x t). `groups` is a list of `Group`s or a mapping name -> runs."""
    if isinstance(groups, Mapping):
        groups = [Group(name, list(runs)) for name, runs in groups.items()]
        _style(groups)
    plt = _pyplot()
    stepped = [g for g in groups if g.method != "majority"]
    voting = [g for g in groups if g.method == "majority"]
    panels = [(key, title, stepped) for key, title in keys] if stepped else []
    if voting:
        panels.append(("majority", "Majority baseline (vote over all samples so far)", voting))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False, sharey=True)
    highs = []
    for ax, (key, title, members) in zip(axes[0], panels):
        for group in members:
            x, mean, std = _series(group, key)
            _draw_group(ax, group, x, mean, std)
            highs.append(float((mean + std).max()))
        ax.set_title(title)
        if members is voting:
            ax.set_xlabel("samples per problem (N x t)")
            ticks = sorted({int(x) for g in members for x in _series(g, key)[0]})
            if len(ticks) <= 12:
                ax.set_xticks(ticks)
        else:
            ax.set_xlabel("RSA step")
            last = max(g.steps() for g in members)
            ax.set_xticks(range(1, last + 1) if last <= 20 else ax.get_xticks())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%), mean ± std over runs")
    _y_limits(axes[0], highs)
    _legend(fig, axes[0])
    return fig


def _legend(fig, axes) -> None:
    """One legend for the figure, to the right of the panels (never over the data)."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)


def training_step_figure(groups: list[Group], keys=PLOTTED):
    """Metrics against the training step for checkpoint sweeps, or None when fewer than two groups are
    checkpoints: one panel per metric (shared y-axis, percent), one line per training configuration at RSA step
    1 (no aggregation, dashed) and at its last step (solid), with a ± std band over seeds."""
    import numpy as np

    sweeps: dict[str, list[Group]] = {}
    for group in groups:
        if group.training_step is not None and group.method != "majority":
            key = json.loads(group.key) if group.key else {}
            model = key.get("model", {})
            model = {k: v for k, v in model.items() if k not in ("checkpoint_step", "path", "revision")}
            if "path" in key.get("model", {}):  # no training record: the checkpoints of one output folder
                model["folder"] = str(Path(key["model"]["path"]).parent)
            key["model"] = model
            sweeps.setdefault(json.dumps(key, sort_keys=True), []).append(group)
    sweeps = {k: sorted(v, key=lambda g: g.training_step) for k, v in sweeps.items() if len(v) > 1}
    if not sweeps:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 4.2), squeeze=False, sharey=True)
    highs = []
    for index, members in enumerate(sweeps.values()):
        colour = members[0].colour
        folders = [Path(str(run.config.get("model", "?"))).parent.name for g in members for run in g.runs]
        name = _common_name(folders) or "checkpoints"
        for ax, (key, title) in zip(axes[0], keys):
            x = np.array([g.training_step for g in members])
            for where, style in (("first", "--"), ("last", "-")):
                values = [_group_values(g, key, where) for g in members]
                mean = np.array([np.mean(v) for v in values])
                std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
                label = f"{name}: {'step 1' if where == 'first' else 'RSA last step'}"
                ax.plot(x, mean, color=colour, linestyle=style, marker="os"[index % 2], markersize=4, label=label)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
                highs.append(float((mean + std).max()))
            ax.set_title(title)
            ax.set_xlabel("training step (checkpoint)")
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%), mean ± std over seeds")
    _y_limits(axes[0], highs)
    _legend(fig, axes[0])
    return fig


def plot_runs(runs: list[RunSummary], out_dir: Path) -> list[Path]:
    """Draw `rsa_steps.png` for `runs` grouped by configuration (`group_runs`); returns the PNG paths."""
    return [write_group_plot(group_runs(runs), Path(out_dir) / "rsa_steps.png")]


def write_group_plot(groups: dict[str, list[RunSummary]] | list[Group], path: str | Path) -> Path:
    """Save `group_figure(groups)` as a PNG at `path` (atomically); returns the path."""
    return _save_figure(group_figure(groups), Path(path))


def _save_figure(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")  # tight: keeps the outside legend
        tmp.replace(path)
        return path
    finally:
        plt.close(fig)


# ----- the report ---------------------------------------------------------------------------------------------
def write_report(
    run_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    skip_incomplete: bool = False,
    names: Mapping[Path, str] | None = None,
    resamples: int = 2000,
) -> dict[str, Path]:
    """Write `report.md`, `report.csv` (per run), `groups.csv` (per group) and the plots for the runs in
    `run_paths` (run directories or folders of them) into `out_dir`; returns the paths by name.

    Unfinished runs raise IncompleteRunError, or are left out (and listed in `report.md`) with `skip_incomplete`.
    `names` maps run paths to group names (see `group_runs`).
    """
    runs, skipped = load_runs(run_paths, skip_incomplete=skip_incomplete)
    names = {Path(k).resolve(): v for k, v in (names or {}).items()}
    for run in runs:
        run.path = Path(run.path)
    groups = group_runs(runs, {run.path: names[run.path.resolve()] for run in runs if run.path.resolve() in names})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = group_rows(groups)
    rules = sorted({r.final_rule for r in runs if r.final_rule})
    parts = [
        "# RSA report\n",
        f"{len(runs)} runs in {len(groups)} groups: runs that differ only in their seed (and models trained with "
        "different seeds; `models` counts them) form one group. Accuracies in percent, mean ± std over the group's runs (sample std); "
        "step 1 is plain sampling, step T the last step every run of the group completed. `final answer` is the "
        "accuracy of the final answers under the run's final rule ("
        + "; ".join(f"`{rule}`: {FINAL_RULES.get(rule, rule)}" for rule in rules)
        + ").\n",
        group_markdown(rows),
        "\n![Pass@1, Pass@N and majority vote vs RSA step, mean ± std per group](rsa_steps.png)\n",
    ]
    comparisons = intervals(groups, resamples=resamples)
    if comparisons:
        parts.append(
            "\n## Bootstrap intervals\n\nPass@1 differences in points of percent with 95% bootstrap intervals over "
            "problems and runs (`rsa.stats.paired_bootstrap`; `paired`: runs matched by seed).\n\n"
            + intervals_markdown(comparisons)
        )
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv", "groups": out_dir / "groups.csv"}
    paths["rsa_steps"] = write_group_plot(groups, out_dir / "rsa_steps.png")
    sweep = training_step_figure(groups)
    if sweep is not None:
        paths["by_training_step"] = _save_figure(sweep, out_dir / "by_training_step.png")
        parts.append("\n![Metrics vs training step](by_training_step.png)\n")
    parts.append("\n## Runs\n\n" + markdown_table(table_rows(runs)))
    if skipped:
        parts.append("\n## Left out (--skip-incomplete)\n\n" + "".join(f"- {line}\n" for line in skipped))
    write_text_atomic(paths["markdown"], "\n".join(parts))
    write_text_atomic(paths["csv"], csv_table(table_rows(runs)))
    write_text_atomic(paths["groups"], group_csv(rows))
    logger.info("report written to %s", out_dir)
    return paths
