"""Importing an already-built aggregation dataset in verl's parquet layout into our training-row columns."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsa.augment.budget import LengthBudget, format_histogram
from rsa.augment.build import base_row
from rsa.augment.config import CLASSES, DATASET_FILE, MANIFEST, REPORT_FILE
from rsa.augment.output import AtomicParquet
from rsa.jsonl import write_json_atomic

logger = logging.getLogger(__name__)


#: candidate headers of aggregation prompts: ours ("---- Candidate solution 2 ----") and the RSA
#: reference code's ("---- Solution 2 ----", "---- Candidate ----")
_CANDIDATE_HEADER = re.compile(
    r"^-{2,}\s*(?:candidate\s+solution|solution|candidate)(?:\s+(\d+))?\s*-{2,}\s*$", re.I | re.M
)
_KIND_FLAGS = ("is_aggregation", "aggregation", "is_agg", "agg")


def detect_aggregation(prompt_text: str, extra: Mapping[str, Any]) -> tuple[str, int]:
    """(kind, K) of an imported prompt: from `extra_info` (`kind`, `k`, an is-aggregation flag) or its headers."""
    kind = extra.get("kind")
    k = extra.get("k", extra.get("num_candidates"))
    headers = _CANDIDATE_HEADER.findall(prompt_text or "")
    if kind not in ("plain", "aggregate"):
        flag = next((extra[f] for f in _KIND_FLAGS if f in extra and extra[f] is not None), None)
        kind = ("aggregate" if flag else "plain") if flag is not None else ("aggregate" if headers else "plain")
    if kind == "plain":
        return "plain", 0
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k > 0:
        return kind, int(k)
    return kind, len(headers)


def _messages(prompt: Any, where: str) -> list[dict[str, str]]:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt) if prompt.strip().startswith("[") else [{"role": "user", "content": prompt}]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: field 'prompt' holds invalid JSON ({exc.msg})") from None
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{where}: field 'prompt' must be a non-empty list of chat messages")
    out = []
    for i, message in enumerate(prompt):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str) or not message.get("role"):
            raise ValueError(f"{where}: field 'prompt' message {i} needs a 'role' and a text 'content'")
        out.append({"role": str(message["role"]), "content": message["content"]})
    return out


@dataclass
class ImportReport:
    """What an import produced: row counts by kind, dropped rows, length figures."""

    source: str = ""
    rows: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    dropped_over_budget: int = 0
    dropped_ids: list[str] = field(default_factory=list)
    prompt_limit: int | None = None
    histogram: str = ""

    def summary(self) -> str:
        """A multi-line text summary for the console."""
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        tasks = ", ".join(f"{k} {v}" for k, v in sorted(self.tasks.items()))
        lines = [f"imported {self.rows} rows from {self.source} ({kinds}; tasks: {tasks})"]
        if self.prompt_limit is not None:
            shown = ", ".join(self.dropped_ids[:5]) + (" ..." if len(self.dropped_ids) > 5 else "")
            lines.append(
                f"dropped {self.dropped_over_budget} row(s) over the prompt limit of {self.prompt_limit} tokens"
                + (f": {shown}" if shown else "")
            )
        if self.histogram:
            lines.append(self.histogram)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready values."""
        return asdict(self)


def convert_verl_row(row: Mapping[str, Any], where: str, default_id: str) -> dict:
    """One verl-layout row as a training row of our column contract; ValueError naming `where` and the field."""
    from rsa.data import row_to_problem

    problem = row_to_problem(row, where, default_id)  # validates the task and its fields
    if problem.answer is None or not str(problem.answer).strip():
        raise ValueError(f"{where}: field 'reward_model.ground_truth' (the gold answer) is missing or empty")
    raw_extra = row.get("extra_info") or {}
    extra = json.loads(raw_extra) if isinstance(raw_extra, str) and raw_extra.strip() else raw_extra
    extra = extra if isinstance(extra, Mapping) else {}
    prompt = _messages(row.get("prompt"), where)
    users = [m["content"] for m in prompt if m["role"] == "user"]
    kind, k = detect_aggregation(users[-1] if users else "", extra)

    def listed(name: str, cast: Callable[[Any], Any]) -> list:
        value = extra.get(name)
        if hasattr(value, "tolist"):
            value = value.tolist()
        return [cast(v) for v in value] if isinstance(value, list) else []

    scores = listed("candidate_scores", float)
    seed = extra.get("seed")
    majority = extra.get("majority_correct")
    mean = extra.get("mean_candidate_accuracy")
    return {
        **base_row(
            problem, prompt, kind, str(extra.get("reference_model") or row.get("data_source") or "unknown"), None
        ),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None,
        "k": k,
        "candidate_ids": listed("candidate_ids", int),
        "candidate_scores": scores,
        "majority_correct": bool(majority) if majority is not None else None,
        "mean_candidate_accuracy": float(mean) if mean is not None else (sum(scores) / len(scores) if scores else None),
        "set_class": extra.get("set_class") if extra.get("set_class") in CLASSES else None,
        "truncated_candidates": 0,
        "prompt_tokens": None,
    }


def import_verl(
    path: str | Path,
    out_dir: str | Path,
    *,
    budget: LengthBudget | None = None,
    batch_rows: int = 1024,
) -> ImportReport:
    """Convert a verl-layout parquet file to `OUT/train.parquet` in our column contract, streaming in batches.

    `prompt` is kept; `reward_model.ground_truth` becomes `answer`; `extra_info.dataset_name`/`entry`
    (and `tests`) become columns; kind and K come from `extra_info` or the candidate headers. With a
    `budget`, rows whose prompt is over it are dropped and counted (their candidates cannot be re-capped).
    """
    import pyarrow.parquet as pq

    path, out = Path(path), Path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"--import {path}: no such file")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"--import {path}: expected a verl-layout .parquet file")
    if (out / MANIFEST).exists():
        raise ValueError(f"{out} holds an `rsa augment` build; import into another --out")
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"--import {path}: not a readable parquet file ({exc})") from exc
    columns = set(source.schema_arrow.names)
    if "prompt" not in columns:
        raise ValueError(f"--import {path}: no 'prompt' column; verl layout has prompt, reward_model, extra_info")
    report = ImportReport(source=str(path), prompt_limit=budget.prompt_limit if budget else None)
    kinds: Counter = Counter()
    tasks: Counter = Counter()
    lengths: list[int] = []
    writer = AtomicParquet(out / DATASET_FILE)
    number = 0
    try:
        for batch in source.iter_batches(batch_size=batch_rows):
            converted = []
            for row in batch.to_pylist():
                number += 1
                converted_row = convert_verl_row(row, f"{path}: row {number}", f"{path.stem}-{number}")
                if budget is not None:
                    tokens = budget.prompt_tokens(converted_row["prompt"])
                    converted_row["prompt_tokens"] = tokens
                    if tokens > budget.prompt_limit:
                        report.dropped_over_budget += 1
                        report.dropped_ids.append(converted_row["problem_id"])
                        continue
                    lengths.append(tokens)
                kinds[converted_row["kind"]] += 1
                tasks[converted_row["task"]] += 1
                converted.append(converted_row)
            writer.write(converted)
        if writer.rows == 0:
            raise ValueError(f"--import {path}: no rows left to write (file empty, or every row over budget)")
    except BaseException:
        writer.abort()
        raise
    writer.close()
    report.rows = writer.rows
    report.kinds, report.tasks = dict(kinds), dict(tasks)
    if budget is not None:
        report.histogram = f"prompt tokens (limit {budget.prompt_limit}):\n" + format_histogram(
            lengths, budget.prompt_limit
        )
        if report.dropped_over_budget:
            logger.warning("%d imported row(s) over the prompt limit dropped", report.dropped_over_budget)
    write_json_atomic(out / REPORT_FILE, report.to_dict())
    return report
