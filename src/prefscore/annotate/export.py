"""Export collected answers as the pairs file that ``prefscore train`` / ``prefscore evaluate`` read
(:mod:`prefscore.data`): columns ``prompt, image_a, image_b, label`` (``a``, ``b`` or ``tie``) with
image paths relative to the output file, plus ``annotator, generator_a, generator_b, timestamp,
pair_id, shown_left, seconds`` (or ``votes`` when aggregated) and, for each precomputed metric
``M`` of the input, ``M_a`` and ``M_b`` (the inline score columns ``prefscore evaluate -c M`` reads).

``image_a`` / ``image_b`` are always in the pair's stored order, whichever side each annotator saw
them on (``shown_left`` says which one was on the left). Skipped pairs are never exported.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .db import Store

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
AGGREGATES = ("none", "majority")


@dataclass(frozen=True)
class ExportOptions:
    """``aggregate``: ``"none"`` (one row per answer) or ``"majority"`` (one row per pair: the label
    most annotators gave, ``tie`` when ``a`` and ``b`` got equally many votes; ``votes`` says
    ``a/b/tie`` counts). ``ties``: keep tie rows. ``repeats``: also export repeat-consistency
    answers (off by default: they would count one person twice)."""

    aggregate: str = "none"
    ties: bool = True
    repeats: bool = False

    def __post_init__(self):
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def export_rows(store: Store, out: Path, options: ExportOptions = ExportOptions()) -> list[dict]:
    """The rows :func:`export_pairs` writes, with image paths relative to ``out``'s folder."""
    base = Path(out).resolve().parent
    rel = lambda p: Path(os.path.relpath(p, base)).as_posix()  # noqa: E731
    answers = [r for r in store.judgement_rows() if r["label"] != "skip" and (options.repeats or not r["is_repeat"])]
    metrics = [m.name for m in store.metric_columns()]

    def scores(r: dict) -> dict:
        out = {}
        for m in metrics:
            out[f"{m}_a"] = r["metrics_a"].get(m)
            out[f"{m}_b"] = r["metrics_b"].get(m)
        return out

    rows: list[dict] = []
    if options.aggregate == "none":
        for r in answers:
            rows.append({"prompt": r["prompt"], "image_a": rel(r["path_a"]), "image_b": rel(r["path_b"]), "label": r["label"],
                         "annotator": r["annotator"], "generator_a": r["generator_a"], "generator_b": r["generator_b"],
                         "timestamp": _iso(r["created_at"]), "pair_id": r["pair_id"], "shown_left": "a" if r["left_is_a"] else "b",
                         "seconds": round(r["created_at"] - r["shown_at"], 3), "repeat": bool(r["is_repeat"]), **scores(r)})
    else:
        by_pair: dict[int, list[dict]] = defaultdict(list)
        for r in answers:
            by_pair[r["pair_id"]].append(r)
        for pair_id, group in by_pair.items():
            votes = Counter(r["label"] for r in group)
            if votes["a"] > votes["b"] and votes["a"] >= votes["tie"]:
                label = "a"
            elif votes["b"] > votes["a"] and votes["b"] >= votes["tie"]:
                label = "b"
            else:
                label = "tie"
            r = group[0]
            rows.append({"prompt": r["prompt"], "image_a": rel(r["path_a"]), "image_b": rel(r["path_b"]), "label": label,
                         "annotator": "+".join(sorted({g["annotator"] for g in group})), "generator_a": r["generator_a"],
                         "generator_b": r["generator_b"], "timestamp": _iso(max(g["created_at"] for g in group)), "pair_id": pair_id,
                         "votes": f"{votes['a']}/{votes['b']}/{votes['tie']}", **scores(r)})
    if not options.ties:
        rows = [r for r in rows if r["label"] != "tie"]
    if not options.repeats:
        for r in rows:
            r.pop("repeat", None)
    return rows


def export_pairs(store: Store, out: str | Path, options: ExportOptions = ExportOptions()) -> int:
    """Write the pairs file (format from the suffix: .csv, .tsv, .jsonl or .parquet); returns the row count."""
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"{out}: unknown output format; use .csv, .tsv, .jsonl or .parquet")
    rows = export_rows(store, out, options)
    columns = list(rows[0]) if rows else ["prompt", "image_a", "image_b", "label", "annotator", "generator_a", "generator_b", "timestamp"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if fmt in ("csv", "tsv"):
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns, delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns})
        pq.write_table(table, tmp)
    os.replace(tmp, out)  # a reader never sees a half-written file
    return len(rows)
