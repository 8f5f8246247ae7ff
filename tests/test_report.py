"""`rsa report`: runs grouped by configuration (seed aside) with mean ± std and bootstrap intervals, folder
discovery, unfinished runs, units in column names, and plots read back from the figure objects.

Run directories are written here in `rsa eval`'s layout (manifest, problems, per-problem files, metrics lines,
final answer) with chosen per-problem scores, so that every expected number is computed from those scores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import run_cli

from rsa.report import group_figure, group_runs, load_run, training_step_figure, write_report
from rsa.stats import paired_bootstrap

PROBLEMS = 20


def scores(rate: float, seed: int) -> list[float]:
    """Per-problem Pass@1 values around `rate` (0..1), different for each seed."""
    if rate == 0:
        return [0.0] * PROBLEMS  # a run that solves nothing
    rng = np.random.default_rng(seed)
    return [float(v) for v in np.clip(rate + rng.normal(0, 0.15, PROBLEMS), 0, 1).round(2)]


def write_run(path: Path, rates: list[float], *, seed: int = 1234, model: str = "models/m", method: str = "rsa",
              final: str | None = "random", population: int = 4) -> Path:  # fmt: skip
    """A run directory over PROBLEMS problems whose step t has per-problem Pass@1 `scores(rates[t-1], ...)`;
    `final=None` leaves it unfinished (no final.json)."""
    (path / "population").mkdir(parents=True)
    (path / "per_problem").mkdir()
    config = {"model": model, "dataset": "rg:toy", "method": method, "population": population, "k": 2,
              "steps": len(rates), "seed": seed, "final": final or "random", "out": str(path)}  # fmt: skip
    manifest = {"format": "rsa-run/1", "config": config, "model": {"path": model, "revision": "sha256:" + model},
                "problems": {"count": PROBLEMS, "sha256": "p" * 64}}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    (path / "problems.jsonl").write_text("".join(json.dumps({"id": f"q{i:02d}"}) + "\n" for i in range(PROBLEMS)))
    lines = []
    for step, rate in enumerate(rates, 1):
        values = scores(rate, seed * 100 + step)
        records = [{"problem_id": f"q{i:02d}", "pass_at_1": v, "pass_at_n": float(v > 0), "majority": float(v > 0.5)}
                   for i, v in enumerate(values)]  # fmt: skip
        (path / "per_problem" / f"step_{step:03d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (path / "population" / f"step_{step:03d}.jsonl").write_text("")
        lines.append({"step": step, "num_problems": PROBLEMS, "method": method, "tokens_generated": 10 * step + seed,
                      **{k: float(np.mean([r[k] for r in records])) for k in ("pass_at_1", "pass_at_n", "majority")}})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if final is not None:
        (path / "final.json").write_text(json.dumps({"rule": final, "accuracy": lines[-1]["majority"], "answers": []}))
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A folder of runs: two models x three seeds, and a `report/` folder that is not a run."""
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        write_run(runs / f"base-s{seed}", [0.3, 0.5, 0.6], seed=seed, model="models/base")
        write_run(runs / f"trained-s{seed}", [0.5, 0.7, 0.8], seed=seed, model="models/trained")
    (runs / "report").mkdir()
    return runs


def test_runs_of_one_configuration_are_averaged_over_seeds(sweep, capsys):
    code, out, err = run_cli(["report", str(sweep)], capsys)  # a folder of runs: discovered, report in it
    assert code == 0, err
    report = sweep / "report"
    groups = list(csv.DictReader((report / "groups.csv").open()))
    assert [(g["group"], g["runs"], g["seeds"]) for g in groups] == [("base", "3", "1 2 3"), ("trained", "3", "1 2 3")]
    for group in groups:
        lasts = [
            100 * json.loads((sweep / f"{group['group']}-s{s}" / "metrics.jsonl").read_text().splitlines()[-1])["pass_at_1"]
            for s in (1, 2, 3)
        ]  # fmt: skip
        assert float(group["pass@1 step T (%) mean"]) == pytest.approx(np.mean(lasts), abs=0.01)
        assert float(group["pass@1 step T (%) std"]) == pytest.approx(np.std(lasts, ddof=1), abs=0.01)
        # the cost next to Pass@1: tokens generated over the run, per problem (10 * (1 + 2 + 3) + 3 * seed in all)
        tokens = [(60 + 3 * s) / PROBLEMS for s in (1, 2, 3)]
        assert float(group["tokens per problem mean"]) == pytest.approx(np.mean(tokens), abs=0.01)
        cell = f"{float(group['pass@1 step T (%) mean']):.1f} ± {float(group['pass@1 step T (%) std']):.1f}"
        assert cell in (report / "report.md").read_text()
    # per run: the same unit (percent) and the same column names in report.md and report.csv
    rows = list(csv.DictReader((report / "report.csv").open()))
    assert len(rows) == 6 and "pass@1 last (%)" in rows[0]
    first = json.loads((sweep / "base-s1" / "metrics.jsonl").read_text().splitlines()[0])["pass_at_1"]
    assert float(rows[0]["pass@1 step 1 (%)"]) == pytest.approx(100 * first, abs=0.01)
    markdown = (report / "report.md").read_text()
    assert "| pass@1 step 1 (%) |" in markdown and f"| {100 * first:.1f} |" in markdown


def test_bootstrap_intervals_come_from_the_per_problem_files(sweep):
    paths = write_report([sweep], sweep / "report", resamples=300)
    text = paths["markdown"].read_text()
    groups = group_runs([load_run(p) for p in sorted(sweep.glob("*-s*"))])
    matrix = [
        [[json.loads(line)["pass_at_1"] for line in (run.path / "per_problem" / f"step_{step:03d}.jsonl").open()]
         for run in group.runs]
        for group in groups for step in (1, 3)
    ]  # fmt: skip
    gain = paired_bootstrap(matrix[2], matrix[3], resamples=300)  # trained: step 3 - step 1, runs paired
    assert (
        f"| trained: step 3 - step 1 | {100 * gain.difference:+.1f} | [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}]"
        in text
    )
    versus = paired_bootstrap(matrix[1], matrix[3], resamples=300)  # the same seeds: paired
    assert f"| trained (step 3) - base (step 3) | {100 * versus.difference:+.1f} |" in text
    assert "| paired | better |" in text


def test_an_unfinished_run_names_itself_and_the_flag(sweep, capsys):
    write_run(sweep / "late-s1", [0.3, 0.4], model="models/late", final=None)
    code, _, err = run_cli(["report", str(sweep), "--out", str(sweep / "r1")], capsys)
    assert code == 2 and "late-s1" in err and "--skip-incomplete" in err
    code, _, err = run_cli(["report", str(sweep), "--out", str(sweep / "r2"), "--skip-incomplete"], capsys)
    assert code == 0, err
    text = (sweep / "r2" / "report.md").read_text()
    assert "## Left out (--skip-incomplete)" in text and "late-s1" in text.split("## Left out")[1]
    assert len(list(csv.DictReader((sweep / "r2" / "groups.csv").open()))) == 2
    code, _, err = run_cli(["report", str(sweep / "report")], capsys)
    assert code == 2 and "no subfolder holds one" in err


def test_plots_share_one_axis_with_a_band_and_a_style_per_group(tmp_path):
    runs = [write_run(tmp_path / f"g{g}-s{s}", [0.5, 0.6, 0.7], seed=s, model=f"models/g{g:02d}")
            for g in range(14) for s in (1, 2)]  # fmt: skip
    runs += [write_run(tmp_path / "zero", [0.0, 0.0, 0.0], model="models/zero")]
    groups = group_runs([load_run(p) for p in runs])
    assert len(groups) == 15
    fig = group_figure(groups)
    try:
        assert len(fig.axes) == 3 and len({ax.get_ylim() for ax in fig.axes}) == 1  # one shared scale
        pass_at_1 = fig.axes[0]
        assert len(pass_at_1.lines) == 15
        assert len({line.get_color() for line in pass_at_1.lines}) == 15  # no colour repeats
        # the 14 groups draw the same curve: each stays visible by its marker and line style
        styles = {(line.get_marker(), line.get_linestyle()) for line in pass_at_1.lines[:14]}
        assert len(styles) >= 10
        assert len(pass_at_1.collections) == 14  # a ± std band per group of two runs, none for the single run
        legend = fig.legends[0]
        fig.canvas.draw()
        right_edge = max(ax.get_position().x1 for ax in fig.axes)
        assert legend.get_window_extent().x0 >= right_edge * fig.bbox.width  # outside the data
    finally:
        plt.close(fig)
    fig = group_figure(group_runs([load_run(tmp_path / "zero")]))
    try:
        assert fig.axes[0].get_ylim() == (0.0, 5.0)  # an all-zero run: 0..5%, not around zero
        assert np.allclose(fig.axes[0].lines[0].get_ydata(), 0)
    finally:
        plt.close(fig)


def test_the_majority_baseline_is_drawn_against_samples_per_problem(tmp_path):
    rsa_run = write_run(tmp_path / "rsa", [0.3, 0.5, 0.6])
    vote = write_run(tmp_path / "vote", [0.3, 0.4, 0.45], method="majority", population=4)
    groups = group_runs([load_run(rsa_run), load_run(vote)])
    fig = group_figure(groups)
    try:
        assert len(fig.axes) == 4
        panel = fig.axes[3]
        assert panel.get_xlabel() == "samples per problem (N x t)"
        assert list(panel.lines[0].get_xdata()) == [4, 8, 12]  # N x t with N = 4
        assert all(len(ax.lines) == 1 for ax in fig.axes[:3])  # the step panels hold RSA only
        assert fig.axes[0].get_xlabel() == "RSA step"
    finally:
        plt.close(fig)
    # the final answer's rule is named: a majority baseline with `--final random` says so
    paths = write_report([rsa_run, vote], tmp_path / "report", resamples=50)
    text = paths["markdown"].read_text()
    assert (
        "| m, method=majority | 1 | 1234 | 1 | majority | rg:toy | 4 | 2 | 3 | random (one member, not the vote) |"
        in text
    )
    assert "`random`: one random member of the last population" in text
    row = next(r for r in csv.DictReader(paths["groups"].open()) if r["method"] == "majority")
    vote = json.loads((vote / "metrics.jsonl").read_text().splitlines()[-1])["majority"]
    assert float(row["majority step T (%) mean"]) == pytest.approx(100 * vote, abs=0.01)


def test_a_checkpoint_sweep_is_plotted_against_the_training_step(tmp_path):
    record = {"training_args": {"learning_rate": 1e-6, "seed": 0, "output_dir": "x"}, "argv": ["train"]}
    runs = []
    for train_seed in (0, 1):
        for step in (100, 200, 300):
            model = tmp_path / f"out-t{train_seed}" / f"checkpoint-{step}"
            model.mkdir(parents=True)
            seeded = {**record, "training_args": {**record["training_args"], "seed": train_seed,
                                                  "output_dir": str(model.parent)}}  # fmt: skip
            (model / "rsa_training.json").write_text(json.dumps(seeded))
            runs.append(write_run(tmp_path / "runs" / f"t{train_seed}-ckpt{step}", [0.1 * step / 100, 0.15 * step / 100],
                                  seed=train_seed, model=str(model)))  # fmt: skip
    groups = group_runs([load_run(p) for p in runs])
    # training seeds pooled (same training record but for its seed), one group per checkpoint step
    assert [(g.training_step, len(g.runs)) for g in groups] == [(100, 2), (200, 2), (300, 2)]
    fig = training_step_figure(groups)
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == "training step (checkpoint)"
        assert [line.get_label() for line in ax.lines] == ["out-t*: step 1", "out-t*: RSA last step"]  # seeds pooled
        assert [list(line.get_xdata()) for line in ax.lines] == [[100, 200, 300]] * 2  # step 1 and last step
        expected = [np.mean([load_run(r).steps[-1]["pass_at_1"] * 100 for r in runs if f"ckpt{s}" in r.name])
                    for s in (100, 200, 300)]  # fmt: skip
        assert np.allclose(ax.lines[1].get_ydata(), expected)
    finally:
        plt.close(fig)
    paths = write_report(runs, tmp_path / "report", resamples=50)
    assert paths["by_training_step"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_layout_gives_one_line_with_a_band_per_arm(tmp_path, capsys):
    """`rsa demo`'s layout: eval/<arm>-t<train seed>-s<RSA seed> over models/<arm>-t<seed> that hold a training
    record; the base has no training seed. The folder alone gives one group per arm; the demo names them."""
    from rsa.toyworld.evidence import ARM_NAMES

    eval_dir, names = tmp_path / "eval", {}
    for rsa_seed in (1234, 1235):
        names[write_run(eval_dir / f"base-s{rsa_seed}", [0.3, 0.5], seed=rsa_seed, model=str(tmp_path / "base"))] = (
            "base"
        )
        for arm, rate in (("standard", 0.5), ("offline", 0.4)):
            for train_seed in (0, 1):
                model = tmp_path / "models" / f"{arm}-t{train_seed}"
                model.mkdir(parents=True, exist_ok=True)
                record = {"script_args": {"arm": arm}, "training_args": {"seed": train_seed, "output_dir": str(model)}}
                (model / "rsa_training.json").write_text(json.dumps(record))
                run = write_run(eval_dir / f"{arm}-t{train_seed}-s{rsa_seed}", [rate, rate + 0.2], seed=rsa_seed,
                                model=str(model))  # fmt: skip
                names[run] = ARM_NAMES[arm]
    code, _, err = run_cli(["report", str(eval_dir)], capsys)
    assert code == 0, err
    groups = list(csv.DictReader((eval_dir / "report" / "groups.csv").open()))
    assert [(g["group"], g["runs"], g["models"]) for g in groups] == [
        ("base", "2", "1"), ("offline-t*", "4", "2"), ("standard-t*", "4", "2")
    ]  # fmt: skip
    paths = write_report(list(names), tmp_path / "report", names=names, resamples=50)
    markdown = paths["markdown"].read_text()
    for row in csv.DictReader(paths["groups"].open()):
        mean, std = float(row["pass@1 step T (%) mean"]), float(row["pass@1 step T (%) std"])
        assert f"| {row['group']} | {row['runs']} |" in markdown and f"{mean:.1f} ± {std:.1f}" in markdown
    fig = group_figure(group_runs([load_run(p) for p in names], names))
    try:
        ax = fig.axes[0]
        assert [line.get_label() for line in ax.lines] == [
            "base (2 runs)", "standard RL (4 runs)", "agg-aware RL (offline, paper)" + " (4 runs)"
        ]  # fmt: skip
        assert len(ax.collections) == 3  # a band per arm
    finally:
        plt.close(fig)
