"""Result tables: streamed to JSONL / CSV, or written to Parquet; resumable."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown output format; use .jsonl, .csv or .parquet") from None


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_done(path: Path) -> list[dict]:
    """Rows already written by an earlier run (for ``--resume``); empty if the file does not exist."""
    if not path.exists():
        return []
    fmt = output_format(path)
    if fmt == "jsonl":
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by an interrupted run is redone
                break
        return rows
    if fmt == "csv":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


class ResultWriter:
    """Writes result rows as they come. JSONL and CSV rows are flushed per chunk (an interrupted run
    keeps everything written); Parquet is written as row groups and closed on exit."""

    def __init__(self, path: Path, columns: list[str], existing: list[dict]):
        self.path = path
        self.columns = columns
        self.format = output_format(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet = None
        if self.format == "jsonl":
            self._fh = open(path, "a" if existing else "w")
        elif self.format == "csv":
            self._fh = open(path, "a" if existing else "w", newline="")
            self._csv = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
            if not existing:
                self._csv.writeheader()
        else:
            self._tmp = path.with_suffix(path.suffix + ".partial")
            self._pending = [dict(r) for r in existing]

    def write(self, rows: Iterable[dict]) -> None:
        rows = [{c: _clean(r.get(c)) for c in self.columns} for r in rows]
        if not rows:
            return
        if self.format == "jsonl":
            for r in rows:
                self._fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            self._fh.flush()
        elif self.format == "csv":
            self._csv.writerows(rows)
            self._fh.flush()
        else:
            self._write_parquet(rows)

    def _write_parquet(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:
            rows = [{c: _clean(r.get(c)) for c in self.columns} for r in self._pending] + rows
            schema = pa.schema([(c, pa.string() if c in ("image", "prompt", "error") else pa.float64()) for c in self.columns])
            self._schema = schema
            self._parquet = pq.ParquetWriter(self._tmp, schema)
        table = pa.Table.from_pylist(rows, schema=self._schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        if self.format == "parquet":
            if self._parquet is None and self._pending is not None:
                self._write_parquet([])  # nothing new: still rewrite the rows kept from the earlier run
            if self._parquet is not None:
                self._parquet.close()
                self._tmp.replace(self.path)
        else:
            self._fh.close()
