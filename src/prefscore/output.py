"""Result tables: streamed to JSONL / CSV, or to committed Parquet parts; resumable after a crash or a kill.

Every format keeps what it has written when the process dies, even by ``kill -9``:

* JSONL and CSV rows are appended and flushed per chunk. A record cut by a crash mid-write (no final
  newline, an unterminated CSV quote, too few fields) is dropped when the file is resumed, before
  anything is appended, so a fragment is never glued to the next row or taken as a finished score.
* Parquet is written as part files ``OUT.parquet.parts/part-NNNNNN.parquet``, each written to a
  temporary name and renamed when complete; at the end they are merged into ``OUT.parquet`` (again
  through a temporary file and a rename) and removed. A resumed run reads the final file and the
  committed parts.

Rows are keyed by the resolved image path (URLs as written) and the prompt: see :func:`row_key`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
TEXT_COLUMNS = ("image", "prompt", "error")
#: Testing aid: with this set to N, the process kills itself (SIGKILL) after committing its N-th
#: chunk of rows, so tests can check what a real ``kill -9`` leaves behind without racing a clock.
KILL_AFTER_COMMITS = "PREFSCORE_TEST_KILL_AFTER_COMMITS"


def output_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown output format; use .jsonl, .csv or .parquet") from None


def parts_dir(path: Path) -> Path:
    """Where a Parquet output keeps its committed parts while a run is in progress."""
    return path.with_name(path.name + ".parts")


def image_key(image: str) -> str:
    """How rows are matched on resume: the resolved absolute path (relative paths against the current
    folder, symbolic links followed), URLs as written."""
    image = str(image)
    if "://" in image:
        return image
    try:
        return str(Path(image).resolve())
    except (OSError, RuntimeError):  # a symbolic link loop: the absolute path as written
        return os.path.abspath(image)


def row_key(row: dict) -> tuple[str, str | None]:
    return image_key(row.get("image") or ""), row.get("prompt") or None


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Existing:
    """What an earlier run left in an output file: its ``columns``, its ``rows`` (one per key, the
    last written wins), ``notes`` on what was repaired, and ``dirty`` when the file must be rewritten
    before anything is appended (an incomplete last record, duplicate rows)."""

    columns: list[str]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    dirty: bool = False


def read_existing(path: Path) -> Existing | None:
    """The rows of an earlier run (for ``--resume``), validated; None when there is nothing yet.

    Only the last record may be incomplete (a crash mid-write): it is dropped and noted. Any other
    unreadable record is an error naming the file and the line.
    """
    fmt = output_format(path)
    if fmt == "parquet":
        found = _read_parquet(path)
    elif not path.exists():
        return None
    else:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a UTF-8 {fmt.upper()} file (byte {exc.start}); cannot resume from it") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the earlier output: {exc.strerror or exc}") from None
        found = _read_jsonl(path, text) if fmt == "jsonl" else _read_csv(path, text)
    if found is None:
        return None
    existing = Existing(*found[:2], notes=found[2], dirty=bool(found[2]))
    # one row per key, the last written wins (an earlier version could append a row twice)
    order: dict[tuple, int] = {}
    rows: list[dict] = []
    for r in existing.rows:
        k = row_key(r)
        if k in order:
            rows[order[k]] = r
        else:
            order[k] = len(rows)
            rows.append(r)
    if len(rows) != len(existing.rows):
        existing.notes.append(f"{path}: {len(existing.rows) - len(rows)} duplicate row(s) merged (the last written kept)")
        existing.dirty = True
        existing.rows = rows
    return existing


def _read_jsonl(path: Path, text: str):
    lines = text.split("\n")
    notes = []
    if lines[-1] != "":  # the last record has no newline: cut by a crash mid-write
        notes.append(f"{path}: dropped the incomplete last line {len(lines)} ({_snippet(lines[-1])}); it is scored again")
    rows, columns = [], None
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "image" not in row:
            raise ValueError(f"{path}: line {number} is not a result row ({_snippet(line)}); fix or remove it before --resume")
        if columns is None:
            columns = list(row)
        rows.append(row)
    if columns is None:
        return ([], [], notes) if notes else None
    return columns, rows, notes


def _read_csv(path: Path, text: str):
    notes = []
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        notes.append(f"{path}: dropped the incomplete last record ({_snippet(text[cut:])}); it is scored again")
        text = text[:cut]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records = []
    try:
        for record in reader:
            records.append((reader.line_num, record))
    except csv.Error as exc:
        if "unexpected end of data" not in str(exc):
            raise ValueError(f"{path}: line {reader.line_num}: {exc}; fix or remove it before --resume") from None
        notes.append(f"{path}: dropped the incomplete last record (an unterminated quoted field); it is scored again")
    if not records:
        return ([], [], notes) if notes else None
    header = records[0][1]
    if "image" not in header:
        raise ValueError(f"{path}: no 'image' column in the header; not a prefscore output")
    rows = []
    for k, (line, record) in enumerate(records[1:], start=1):
        if len(record) != len(header):
            if k == len(records) - 1:
                notes.append(f"{path}: dropped the incomplete last record (line {line}: {len(record)} of {len(header)} fields)")
                break
            raise ValueError(f"{path}: line {line} has {len(record)} fields, the header {len(header)}; fix or remove it before --resume")
        row = {}
        for c, v in zip(header, record):
            if c in TEXT_COLUMNS:
                row[c] = v if (v or c == "prompt") else None
            else:
                try:
                    row[c] = float(v) if v != "" else None
                except ValueError:
                    raise ValueError(f"{path}: line {line}: column {c!r} holds {v!r}, not a number; fix or remove it before --resume") from None
        rows.append(row)
    return header, rows, notes


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    tables = []
    if path.exists():
        try:
            tables.append(pq.read_table(path))
        except Exception as exc:  # pyarrow raises several kinds for a damaged file
            raise ValueError(f"{path}: cannot read the earlier output: {exc}") from None
    for part in _committed_parts(path):
        tables.append(pq.read_table(part))
    if not tables:
        return None
    columns: list[str] = []
    for t in tables:
        columns = merge_columns(columns, t.column_names)
    rows = [{c: _clean(r.get(c)) for c in columns} for t in tables for r in t.to_pylist()]
    notes = []
    return columns, rows, notes


def _committed_parts(path: Path) -> list[Path]:
    d = parts_dir(path)
    return sorted(d.glob("part-*.parquet")) if d.is_dir() else []


def _snippet(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def merge_columns(old: list[str], new: list[str]) -> list[str]:
    """Columns of a resumed file: ``image``, ``prompt`` (if either has it), the old metric columns,
    then the new ones, ``error`` last. No column of the earlier run is dropped."""
    out = ["image"] + (["prompt"] if "prompt" in old or "prompt" in new else [])
    for c in list(old) + list(new):
        if c not in TEXT_COLUMNS and c not in out:
            out.append(c)
    return out + ["error"]


class ResultWriter:
    """Writes result rows as they come; see the module docstring for what survives a crash.

    ``existing``: what :func:`read_existing` found (resume), or None (a new file, replacing any old
    one). The earlier rows are rewritten under ``columns`` when these changed or the file needed a
    repair; otherwise new rows are appended. :meth:`supersede` marks keys whose earlier rows are
    replaced by a row written in this run (a resumed row completed with new metrics); the file is
    compacted on :meth:`close`, and until then the later row wins when the file is read back.
    """

    def __init__(self, path: Path, columns: list[str], existing: Existing | None = None):
        self.path = path
        self.columns = columns
        self.format = output_format(path)
        self.superseded: set[tuple] = set()
        self._commits = 0
        self._kill_after = int(os.environ.get(KILL_AFTER_COMMITS, "0") or 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        rewrite = existing is not None and (existing.dirty or existing.columns != columns)
        if self.format == "parquet":
            self._parts = parts_dir(path)
            if existing is None:  # a new run: nothing of an earlier one survives it
                shutil.rmtree(self._parts, ignore_errors=True)
                path.unlink(missing_ok=True)
            elif rewrite:
                self._write_parquet_file(path, [self._table(existing.rows)])
                shutil.rmtree(self._parts, ignore_errors=True)
            for stale in self._parts.glob("*.tmp") if self._parts.is_dir() else ():
                stale.unlink()
            self._next_part = len(_committed_parts(path))
            return
        if rewrite:
            self._rewrite_text(existing.rows)
        self._fh = open(path, "a" if existing is not None else "w", newline="" if self.format == "csv" else None, encoding="utf-8")
        if self.format == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=columns, extrasaction="ignore")
            if existing is None:
                self._csv.writeheader()
                self._fh.flush()

    # -- writing ---------------------------------------------------------------------------------
    def write(self, rows: Iterable[dict]) -> None:
        """Commit ``rows``: appended and flushed (JSONL/CSV) or written as one Parquet part."""
        rows = [{c: _clean(r.get(c)) for c in self.columns} for r in rows]
        if not rows:
            return
        if self.format == "jsonl":
            self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            self._fh.flush()
        elif self.format == "csv":
            self._csv.writerows(rows)
            self._fh.flush()
        else:
            import pyarrow.parquet as pq

            self._parts.mkdir(parents=True, exist_ok=True)
            part = self._parts / f"part-{self._next_part:06d}.parquet"
            tmp = part.with_name(part.name + ".tmp")
            pq.write_table(self._table(rows), tmp)
            os.replace(tmp, part)
            self._next_part += 1
        self._commits += 1
        if self._kill_after and self._commits >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def supersede(self, keys: Iterable[tuple]) -> None:
        self.superseded.update(keys)

    def close(self) -> None:
        if self.format != "parquet":
            self._fh.close()
            if self.superseded:
                found = read_existing(self.path)
                self._rewrite_text(found.rows)
            return
        parts = _committed_parts(self.path)
        if not parts and not self.superseded:
            if not self.path.exists():
                self._write_parquet_file(self.path, [self._table([])])
            return
        import pyarrow.parquet as pq

        if self.superseded:
            tables = [self._table(read_existing(self.path).rows)]
        else:
            tables = ([pq.read_table(self.path)] if self.path.exists() else []) + [pq.read_table(p) for p in parts]
        self._write_parquet_file(self.path, tables)
        shutil.rmtree(self._parts, ignore_errors=True)

    # -- internals -------------------------------------------------------------------------------
    def _schema(self):
        import pyarrow as pa

        return pa.schema([(c, pa.string() if c in TEXT_COLUMNS else pa.float64()) for c in self.columns])

    def _table(self, rows: list[dict]):
        import pyarrow as pa

        return pa.Table.from_pylist([{c: _clean(r.get(c)) for c in self.columns} for r in rows], schema=self._schema())

    def _write_parquet_file(self, path: Path, tables) -> None:
        import pyarrow.parquet as pq

        tmp = path.with_name(path.name + ".tmp")
        schema = self._schema()
        with pq.ParquetWriter(tmp, schema) as writer:
            for t in tables:
                writer.write_table(t.select(self.columns).cast(schema) if t.schema != schema else t)
        os.replace(tmp, path)

    def _rewrite_text(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="" if self.format == "csv" else None, encoding="utf-8") as fh:
            if self.format == "csv":
                w = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
                w.writeheader()
                w.writerows({c: _clean(r.get(c)) for c in self.columns} for r in rows)
            else:
                fh.write("".join(json.dumps({c: _clean(r.get(c)) for c in self.columns}, ensure_ascii=False) + "\n" for r in rows))
        os.replace(tmp, self.path)
