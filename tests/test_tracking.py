"""`rsa eval`'s tracker: per-step summaries become TensorBoard scalars that TensorBoard reads back."""

from __future__ import annotations

import pytest

from rsa.tracking import MetricsTracker, check_report_to, scalars


def _read_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(e.step, round(e.value, 6)) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_scalars_per_step_and_rewritten_on_resume(tmp_path):
    summaries = [{"step": 1, "pass_at_1": 0.25, "pass_at_n": 0.5, "mean_length": 12.0, "note": "x", "ok": True},
                 {"step": 2, "pass_at_1": 0.5, "pass_at_n": 0.75, "mean_length": float("nan")}]  # fmt: skip
    tracker = MetricsTracker(["tensorboard"], tmp_path, "run", {"k": 4})
    tracker.log_steps(summaries)
    tracker.close()
    logged = _read_scalars(tmp_path / "tensorboard")
    assert logged["rsa/pass_at_1"] == [(1, 0.25), (2, 0.5)]
    assert logged["rsa/pass_at_n"] == [(1, 0.5), (2, 0.75)]
    assert logged["rsa/mean_length"] == [(1, 12.0)]  # NaN is not logged
    assert set(logged) == {"rsa/pass_at_1", "rsa/pass_at_n", "rsa/mean_length"}
    # a resumed run logs every committed step again into a fresh folder: no step appears twice
    again = MetricsTracker(["tensorboard"], tmp_path, "run", {"k": 4})
    again.log_steps(summaries)
    again.close()
    assert _read_scalars(tmp_path / "tensorboard")["rsa/pass_at_1"] == [(1, 0.25), (2, 0.5)]


def test_report_to_names_are_checked():
    assert check_report_to("none") == [] and check_report_to(["tensorboard"]) == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker"):
        check_report_to(["mlflow"])
    assert scalars({"step": 3, "a": 1, "b": True, "c": "s"}) == {"a": 1.0}


def test_rsa_eval_reports_per_step_metrics_to_tensorboard(tiny_model_dir, tmp_path):
    """`rsa eval --report-to tensorboard` writes each step's metrics.jsonl values as TensorBoard scalars."""
    import json

    from rsa.cli import main

    out = tmp_path / "run"
    argv = ["eval", "--model", tiny_model_dir, "--engine", "hf", "--dataset", "rg:basic_arithmetic", "--limit", "2",
            "--population", "2", "--k", "2", "--steps", "2", "--max-new-tokens", "8", "--out", str(out),
            "--no-progress", "--report-to", "tensorboard"]  # fmt: skip
    assert main(argv) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = _read_scalars(out / "tensorboard")
    assert logged["rsa/pass_at_1"] == [(m["step"], round(m["pass_at_1"], 6)) for m in metrics]
    assert [s for s, _ in logged["rsa/mean_length"]] == [1, 2]
    assert main(["eval", "--model", tiny_model_dir, "--dataset", "rg:basic_arithmetic", "--out", str(tmp_path / "x"),
                 "--report-to", "mlflow"]) == 2  # fmt: skip
    assert not (tmp_path / "x").exists()
