"""Human-judgement data: preference pairs, k-way rankings and ratings, read from CSV, JSONL or Parquet.

Three kinds of record (one per row), recognised from the columns:

* **pairs** - ``image_a``, ``image_b``, ``label`` (``a``, ``b`` or ``tie``, case-insensitive), optional
  ``prompt`` and ``margin`` (a float >= 0: how much the winner should win by, trl's margin column).
* **rankings** - ``images`` (a list of k >= 2 paths) and ``ranks`` (a list of k numbers, 1 = best, equal
  numbers = tied), optional ``prompt``. In CSV both cells hold JSON lists: ``["x.png", "y.png"]``.
  :meth:`Judgements.pairs` expands a ranking into its C(k, 2) pairs with a strict order, as ImageReward
  does (tied images make no pair).
* **ratings** - ``image`` and ``score`` (a finite float, higher is better), optional ``prompt``.

Image paths are relative to the data file's folder (absolute paths are kept). Every problem (missing
column, bad label, missing image file, a pair of an image with itself, ...) is reported at once in one
:class:`DataError` naming the file and the line (CSV: physical line, header = line 1; JSONL: line;
Parquet: row, 1-based). Rows identical in every column to an earlier row are kept (each counts) but
reported with a :class:`DuplicateRowsWarning` (how many, and the first ones with the line they repeat),
also listed in :attr:`Judgements.warnings`.

>>> data = load_judgements("prefs.csv")          # kind found from the columns
>>> train, val = data.split(val_fraction=0.1, seed=0)   # no prompt in both
>>> [(p.image_a, p.image_b, p.target) for p in val.pairs()]
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings as _warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np

from .errors import PrefscoreError

KINDS = ("pairs", "rankings", "ratings")
LABELS = ("a", "b", "tie")
_TARGET = {"a": 1.0, "b": 0.0, "tie": 0.5}
_MAX_SHOWN = 20


class DataError(PrefscoreError, ValueError):
    """A judgement file that cannot be used; ``problems`` lists ``(location, reason)`` for each bad row."""

    def __init__(self, source: str, problems: Sequence[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        shown = "\n".join(f"  {where}: {why}" for where, why in self.problems[:_MAX_SHOWN])
        more = f"\n  ... and {len(self.problems) - _MAX_SHOWN} more" if len(self.problems) > _MAX_SHOWN else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{shown}{more}")


class DuplicateRowsWarning(UserWarning):
    """A judgement file repeats rows exactly (each copy counts again in training and evaluation)."""


@dataclass(frozen=True)
class Pair:
    """Two images judged against one prompt. ``label``: ``"a"``, ``"b"`` or ``"tie"``.

    ``margin`` (>= 0, score units) asks the winner to win by at least that much (ignored for ties).
    ``row`` names the record in its file (e.g. ``"prefs.csv:12"``); ``group`` is the prompt, or the
    row when the file has no prompts (used for splitting and for bootstrap resampling).
    """

    prompt: str
    image_a: str
    image_b: str
    label: str
    margin: float = 0.0
    row: str = ""

    @property
    def target(self) -> float:
        """Probability that ``image_a`` is preferred: 1.0 (a), 0.0 (b) or 0.5 (tie)."""
        return _TARGET[self.label]


@dataclass(frozen=True)
class Ranking:
    """k >= 2 images of one prompt with their ranks (1 = best; equal ranks are ties)."""

    prompt: str
    images: tuple[str, ...]
    ranks: tuple[float, ...]
    row: str = ""

    def pairs(self) -> list[Pair]:
        """All C(k, 2) pairs with a strict order (ImageReward's expansion), the better image as ``a``."""
        out = []
        for i, j in combinations(range(len(self.images)), 2):
            if self.ranks[i] == self.ranks[j]:
                continue
            better, worse = (i, j) if self.ranks[i] < self.ranks[j] else (j, i)
            out.append(Pair(self.prompt, self.images[better], self.images[worse], "a", 0.0, self.row))
        return out


@dataclass(frozen=True)
class Rating:
    """One image with a score (any finite float, higher is better) and an optional prompt."""

    prompt: str
    image: str
    score: float
    row: str = ""


Record = Union[Pair, Ranking, Rating]


@dataclass
class Judgements:
    """A list of records of one kind (``"pairs"``, ``"rankings"`` or ``"ratings"``).

    ``has_prompts`` is False when the file had no prompt column (prompts are then ``""`` and every
    record is its own group). ``warnings``: what reading the file found worth saying (duplicate rows).
    """

    kind: str
    records: list[Record]
    source: str = ""
    has_prompts: bool = True
    _groups: list[str] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")
        if not self._groups:
            self._groups = [r.prompt if self.has_prompts else r.row for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def groups(self) -> list[str]:
        """The split/bootstrap unit of each record: its prompt (or its row without prompts)."""
        return list(self._groups)

    def prompts(self) -> list[str]:
        """Distinct prompts, in order of first appearance."""
        return list(dict.fromkeys(r.prompt for r in self.records))

    def images(self) -> list[str]:
        """Distinct image paths, in order of first appearance."""
        seen: dict[str, None] = {}
        for r in self.records:
            for p in record_images(r):
                seen.setdefault(p)
        return list(seen)

    def pairs(self) -> list[Pair]:
        """Pairs (as stored, or expanded from rankings). Ratings have no pairs: use :meth:`rating_pairs`."""
        if self.kind == "pairs":
            return list(self.records)  # type: ignore[arg-type]
        if self.kind == "rankings":
            return [p for r in self.records for p in r.pairs()]  # type: ignore[union-attr]
        raise ValueError("ratings are not pairs; use rating_pairs() for pairs of differently rated images")

    def subset(self, indices: Sequence[int]) -> "Judgements":
        return Judgements(self.kind, [self.records[i] for i in indices], self.source, self.has_prompts,
                          [self._groups[i] for i in indices])

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple["Judgements", "Judgements"]:
        """``(train, val)`` by group: each prompt goes wholly to one side.

        ``round(val_fraction * n_groups)`` groups (at least 1 when ``val_fraction > 0`` and there are
        two or more groups) are drawn with ``numpy.random.default_rng(seed)``.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
        unique = list(dict.fromkeys(self._groups))
        n_val = int(round(val_fraction * len(unique)))
        if val_fraction > 0 and len(unique) >= 2:
            n_val = min(max(n_val, 1), len(unique) - 1)
        order = np.random.default_rng(seed).permutation(len(unique))
        val_groups = {unique[i] for i in order[:n_val]}
        train_idx = [i for i, g in enumerate(self._groups) if g not in val_groups]
        val_idx = [i for i, g in enumerate(self._groups) if g in val_groups]
        return self.subset(train_idx), self.subset(val_idx)


def rating_pairs(ratings: Sequence[Rating], by_prompt: bool = True, max_pairs: int = 20000, seed: int = 0) -> list[Pair]:
    """Pairs of differently rated images (higher score as ``a``), within each prompt when ``by_prompt``.

    When there are more than ``max_pairs`` candidate pairs, a uniform random sample of them is kept.
    """
    groups: dict[str, list[Rating]] = {}
    for r in ratings:
        groups.setdefault(r.prompt if by_prompt else "", []).append(r)
    index = [(g, i, j) for g, items in groups.items() for i, j in combinations(range(len(items)), 2)
             if items[i].score != items[j].score]
    if len(index) > max_pairs:
        keep = np.random.default_rng(seed).choice(len(index), size=max_pairs, replace=False)
        index = [index[k] for k in sorted(keep)]
    out = []
    for g, i, j in index:
        x, y = groups[g][i], groups[g][j]
        hi, lo = (x, y) if x.score > y.score else (y, x)
        out.append(Pair(hi.prompt, hi.image, lo.image, "a", 0.0, f"{hi.row}+{lo.row}"))
    return out


def record_images(r: Record) -> tuple[str, ...]:
    if isinstance(r, Pair):
        return (r.image_a, r.image_b)
    if isinstance(r, Ranking):
        return r.images
    return (r.image,)


# -- reading ------------------------------------------------------------------------------------

def read_rows(path: Path) -> tuple[list[str], list[tuple[str, dict]]]:
    """``(columns, [(location, row dict)])`` for a CSV, JSONL or Parquet file."""
    suffix = path.suffix.lower()
    name = path.name
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = []
            start = 2
            for raw in reader:
                rows.append((f"{name}, line {start}", {k.strip(): v for k, v in raw.items() if k is not None}))
                start = reader.line_num + 1
        return columns, rows
    if suffix in (".jsonl", ".ndjson"):
        rows, columns = [], {}
        problems = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append((f"{name}, line {n}", f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                problems.append((f"{name}, line {n}", f"expected a JSON object, found {type(obj).__name__}"))
                continue
            columns.update(dict.fromkeys(obj))
            rows.append((f"{name}, line {n}", obj))
        if problems:
            raise DataError(str(path), problems)
        return list(columns), rows
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return list(table.column_names), [(f"{name}, row {i + 1}", row) for i, row in enumerate(table.to_pylist())]
    raise DataError(str(path), [(name, f"unsupported file type {suffix!r}: use .csv, .tsv, .jsonl or .parquet")])


def detect_kind(columns: Sequence[str]) -> str:
    """The record kind that a set of column names describes (see the module docstring)."""
    cols = set(columns)
    if {"image_a", "image_b", "label"} <= cols:
        return "pairs"
    if {"images", "ranks"} <= cols:
        return "rankings"
    if {"image", "score"} <= cols:
        return "ratings"
    raise ValueError(
        f"cannot tell the kind of judgements from the columns {sorted(cols)}: pairs need image_a, image_b, label; "
        f"rankings need images, ranks; ratings need image, score"
    )


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def load_judgements(path: str | Path, kind: str | None = None, check_images: bool = True) -> Judgements:
    """Read and validate a judgement file (CSV/TSV, JSONL or Parquet).

    ``kind``: ``"pairs"``, ``"rankings"`` or ``"ratings"``; None detects it from the columns.
    ``check_images``: report image files that do not exist (paths resolved against the file's folder).
    Raises :class:`DataError` listing every bad row.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(str(path), [(str(path), "file not found")])
    columns, rows = read_rows(path)
    try:
        found = detect_kind(columns)
    except ValueError as exc:
        raise DataError(str(path), [(path.name, str(exc))]) from None
    if kind is not None and kind != found:
        raise DataError(str(path), [(path.name, f"expected {kind} but the columns {sorted(columns)} describe {found}")])
    if not rows:
        raise DataError(str(path), [(path.name, "no records")])
    root = path.parent
    has_prompts = "prompt" in columns
    problems: list[tuple[str, str]] = []
    records: list[Record] = []
    for where, row in rows:
        before = len(problems)
        rec = _parse(found, row, where, root, has_prompts, problems)
        if check_images and rec is not None:
            for img in record_images(rec):
                if not Path(img).is_file():
                    problems.append((where, f"image file not found: {img}"))
        if rec is not None and len(problems) == before:
            records.append(rec)
    if problems:
        raise DataError(str(path), problems)
    notes = []
    duplicates = _duplicate_rows(rows)
    if duplicates:
        shown = "; ".join(f"{where} repeats {first}" for where, first in duplicates[:5])
        more = f"; ... and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        notes.append(f"{path}: {len(duplicates)} row(s) identical to an earlier row, each counted again "
                     f"(remove them if they are copies): {shown}{more}")
        _warnings.warn(notes[-1], DuplicateRowsWarning, stacklevel=2)
    return Judgements(found, records, str(path), has_prompts, warnings=notes)


def _duplicate_rows(rows: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """``(location, location of the first identical row)`` for every row equal in all columns to an earlier one."""
    first: dict[str, str] = {}
    out = []
    for where, row in rows:
        key = json.dumps({k: str(v) for k, v in row.items()}, sort_keys=True)
        if key in first:
            out.append((where, first[key]))
        else:
            first[key] = where
    return out


def _same_image(a: str, b: str) -> bool:
    """The two paths name one file (after normalising ``./`` and ``..``, and following links when both exist)."""
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _path(value, root: Path) -> str:
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else root / p)


def _prompt(row: dict, where: str, has_prompts: bool, problems: list) -> str | None:
    if not has_prompts:
        return ""
    value = row.get("prompt")
    if _is_missing(value):
        problems.append((where, "prompt is missing (the file has a prompt column, so every row needs one)"))
        return None
    if not isinstance(value, str):
        problems.append((where, f"prompt is {type(value).__name__}, not text"))
        return None
    return value


def _float(value, what: str, where: str, problems: list) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        problems.append((where, f"{what} {value!r} is not a number"))
        return None
    if not math.isfinite(x):
        problems.append((where, f"{what} {value!r} is not finite"))
        return None
    return x


def _list(value, what: str, where: str, problems: list) -> list | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            problems.append((where, f"{what} is not a JSON list: {value[:60]!r}"))
            return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        problems.append((where, f"{what} must be a list, not {type(value).__name__}"))
        return None
    return list(value)


def _parse(kind: str, row: dict, where: str, root: Path, has_prompts: bool, problems: list) -> Record | None:
    prompt = _prompt(row, where, has_prompts, problems)
    if kind == "pairs":
        a, b, label = row.get("image_a"), row.get("image_b"), row.get("label")
        bad = [c for c, v in (("image_a", a), ("image_b", b), ("label", label)) if _is_missing(v)]
        if bad:
            problems.append((where, f"{', '.join(bad)} missing (empty or NaN)"))
            return None
        lab = str(label).strip().lower()
        if lab not in LABELS:
            problems.append((where, f"label {label!r} is not one of a, b, tie"))
            return None
        margin = 0.0
        if not _is_missing(row.get("margin")):
            margin = _float(row["margin"], "margin", where, problems)
            if margin is None:
                return None
            if margin < 0:
                problems.append((where, f"margin {margin} is negative"))
                return None
        if prompt is None:
            return None
        pa, pb = _path(a, root), _path(b, root)
        if _same_image(pa, pb):
            same = str(a).strip() if str(a).strip() == str(b).strip() else f"{str(a).strip()} and {str(b).strip()}"
            problems.append((where, f"image_a and image_b are the same image ({same}): a pair needs two different images"))
            return None
        return Pair(prompt, pa, pb, lab, margin, where)
    if kind == "rankings":
        images = _list(row.get("images"), "images", where, problems)
        ranks = _list(row.get("ranks"), "ranks", where, problems)
        if images is None or ranks is None or prompt is None:
            return None
        if len(images) != len(ranks):
            problems.append((where, f"{len(images)} images but {len(ranks)} ranks"))
            return None
        if len(images) < 2:
            problems.append((where, "a ranking needs at least 2 images"))
            return None
        values = [_float(r, "rank", where, problems) for r in ranks]
        if any(v is None for v in values) or any(_is_missing(i) for i in images):
            if not any(v is None for v in values):
                problems.append((where, "an image path in the list is empty"))
            return None
        paths = [_path(i, root) for i in images]
        repeated = [str(images[j]).strip() for j in range(len(paths)) if any(_same_image(paths[j], paths[i]) for i in range(j))]
        if repeated:
            problems.append((where, f"the ranking lists the same image more than once ({', '.join(repeated)})"))
            return None
        return Ranking(prompt, tuple(paths), tuple(values), where)  # type: ignore[arg-type]
    image, score = row.get("image"), row.get("score")
    if _is_missing(image) or _is_missing(score):
        problems.append((where, f"{'image' if _is_missing(image) else 'score'} missing (empty or NaN)"))
        return None
    value = _float(score, "score", where, problems)
    if value is None or prompt is None:
        return None
    return Rating(prompt, _path(image, root), value, where)


def write_judgements(path: str | Path, records: Sequence[Record], relative_to: str | Path | None = None) -> Path:
    """Write records as CSV, JSONL or Parquet (by suffix); paths relative to the file's folder when possible."""
    path = Path(path)
    root = Path(relative_to) if relative_to is not None else path.parent

    def rel(p: str) -> str:
        try:
            return str(Path(p).resolve().relative_to(root.resolve()))
        except ValueError:
            return p

    rows = []
    for r in records:
        if isinstance(r, Pair):
            rows.append({"prompt": r.prompt, "image_a": rel(r.image_a), "image_b": rel(r.image_b), "label": r.label,
                         "margin": r.margin})
        elif isinstance(r, Ranking):
            rows.append({"prompt": r.prompt, "images": [rel(i) for i in r.images], "ranks": list(r.ranks)})
        else:
            rows.append({"prompt": r.prompt, "image": rel(r.image), "score": r.score})
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"unsupported file type {suffix!r}: use .csv, .jsonl or .parquet")
    return path
