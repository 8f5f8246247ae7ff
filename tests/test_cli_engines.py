"""`rsa eval --engine vllm` and `rsa augment --engine vllm|openai` from the command line, on the tiny model.

The in-process vLLM engine cases run `rsa` as a subprocess: a second in-process vLLM engine must not meet
the session's shared one. The openai case talks to the session's real vLLM server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsa.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[1]
# the vLLM engine on a 2-core CPU: a small KV cache, eager mode, float32 like the HF reference
VLLM_OPTIONS = ["--engine", "vllm", "--dtype", "float32", "--max-model-len", "1024",
                "--engine-arg", "kv_cache_memory_bytes=268435456", "--engine-arg", "enforce_eager=true"]  # fmt: skip


def _rsa(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rsa.cli", *argv], capture_output=True, text=True, timeout=900,
                          env=env, cwd=cwd)  # fmt: skip


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_rsa_eval_with_the_vllm_engine(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "run"
    proc = _rsa(["eval", "--model", tiny_model_dir, *VLLM_OPTIONS, "--dataset", "rg:basic_arithmetic", "--limit", "3",
                 "--population", "4", "--k", "2", "--steps", "2", "--max-new-tokens", "16", "--no-progress",
                 "--out", str(out)], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "vllm" and manifest["config"]["max_new_tokens"] == 16
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 < m["tokens_generated"] <= 3 * 4 * 16 for m in metrics)
    assert "pass@1" in proc.stdout  # the per-step table


def test_rsa_augment_with_the_vllm_engine(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "agg"
    proc = _rsa(["augment", "--model", tiny_model_dir, *VLLM_OPTIONS, "--dataset", "rg:basic_arithmetic", "--size", "4",
                 "--num-candidates", "3", "--max-new-tokens", "16", "--k", "2", "--aggregate-fraction", "0.5",
                 "--train-context-len", "512", "--max-completion-length", "16", "--no-progress", "--out", str(out)],
                tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "train.parquet")
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["aggregate"] * 4 + ["plain"] * 4, kinds
    assert all(r["k"] == 2 and len(r["candidate_ids"]) == 2 for r in rows if r["kind"] == "aggregate")


def test_rsa_augment_with_the_openai_engine(vllm_server, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "served"
    argv = ["augment", "--engine", "openai", "--model", vllm_server.model, "--base-url", vllm_server.url,
            "--tokenizer", tiny_model_dir, "--engine-arg", f"tokenizer={tiny_model_dir}", "--max-model-len", "1024",
            "--dataset", "rg:basic_arithmetic", "--size", "4", "--num-candidates", "3", "--max-new-tokens", "16",
            "--k", "2", "--aggregate-fraction", "0.5", "--train-context-len", "512", "--max-completion-length", "16",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    rows = _rows(out / "train.parquet")
    assert sorted(r["kind"] for r in rows) == ["aggregate"] * 4 + ["plain"] * 4
    candidates = [json.loads(line) for f in sorted((out / "candidates").glob("shard_*.jsonl"))
                  for line in f.read_text().splitlines()]  # fmt: skip
    assert len(candidates) == 4 * 3 and all(c["text"] for c in candidates)


@pytest.mark.parametrize("engine", ["hf"])
def test_data_build_script_builds_a_dataset(tiny_model_dir, tmp_path, engine):
    """data/build_agg_dataset.py, run as a user runs it (a subprocess from the checkout), on the tiny model."""
    out = tmp_path / "agg"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the script finds the package itself
    argv = [sys.executable, str(REPO / "data" / "build_agg_dataset.py"), "--model", tiny_model_dir, "--engine", engine,
            "--dtype", "float32", "--dataset", "rg:basic_arithmetic", "--size", "4", "--num-candidates", "2",
            "--max-new-tokens", "8", "--k", "2", "--aggregate-fraction", "0.5", "--train-context-len", "512",
            "--max-completion-length", "16", "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r["kind"] for r in _rows(out / "train.parquet")) == ["aggregate"] * 4 + ["plain"] * 4
    bad = subprocess.run([*argv[:2], "--model", tiny_model_dir, "--dataset", "rg:basic_arithmetic", "--out",
                          str(tmp_path / "x"), "--aggregate-fraction", "2"], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "--aggregate-fraction" in bad.stderr and not (tmp_path / "x").exists()
