"""The training dataset as parquet, written atomically (in batches for large files)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def dataset_schema() -> Any:
    """The Arrow schema of training datasets (docs/FORMATS.md, plus set_class, truncated_candidates, prompt_tokens)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("task", pa.string()),
            ("answer", pa.string()),
            ("dataset_name", pa.string()),
            ("entry", pa.string()),
            ("tests", pa.string()),
            ("kind", pa.string()),
            ("problem_id", pa.string()),
            ("k", pa.int64()),
            ("candidate_ids", pa.list_(pa.int64())),
            ("candidate_scores", pa.list_(pa.float64())),
            ("majority_correct", pa.bool_()),
            ("mean_candidate_accuracy", pa.float64()),
            ("reference_model", pa.string()),
            ("seed", pa.int64()),
            ("set_class", pa.string()),
            ("truncated_candidates", pa.int64()),
            ("prompt_tokens", pa.int64()),
        ]
    )


class _AtomicParquet:
    """A parquet file written in batches to a temporary file, fsynced and renamed into place on `close`."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, dataset_schema())
        self.rows = 0

    def write(self, rows: Sequence[dict]) -> None:
        import pyarrow as pa

        if rows:
            self.writer.write_table(pa.Table.from_pylist(list(rows), schema=dataset_schema()))
            self.rows += len(rows)

    def close(self) -> None:
        self.writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_dataset(rows: Sequence[dict], path: str | Path) -> Path:
    """Write training rows as parquet, atomically; returns the path."""
    out = _AtomicParquet(Path(path))
    try:
        out.write(rows)
    except BaseException:
        out.abort()
        raise
    out.close()
    return out.path
