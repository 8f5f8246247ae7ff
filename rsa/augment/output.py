"""The training dataset as parquet, written atomically (in batches for large files)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsa.rows import arrow_schema


def dataset_schema() -> Any:
    """The Arrow schema of training datasets: every column of `rsa.rows.COLUMNS` (docs/FORMATS.md)."""
    return arrow_schema()


class AtomicParquet:
    """A parquet file written in batches to a temporary file, fsynced and renamed into place on `close`."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from rsa.jsonl import current_umask

        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())  # not mkstemp's 0600: the dataset follows the umask
        os.close(fd)
        self.writer = pq.ParquetWriter(self.tmp, dataset_schema())
        self.rows = 0

    def write(self, rows: Sequence[dict]) -> None:
        """Append `rows` to the temporary file."""
        import pyarrow as pa

        if rows:
            self.writer.write_table(pa.Table.from_pylist(list(rows), schema=dataset_schema()))
            self.rows += len(rows)

    def close(self) -> None:
        """Finish the file and move it into place."""
        self.writer.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Discard the temporary file."""
        self.writer.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_dataset(rows: Sequence[dict], path: str | Path) -> Path:
    """Write training rows as parquet, atomically; returns the path."""
    out = AtomicParquet(Path(path))
    try:
        out.write(rows)
    except BaseException:
        out.abort()
        raise
    out.close()
    return out.path
