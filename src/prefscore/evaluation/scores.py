"""Per-image score tables: read from a ``prefscore score`` output file or a DataFrame, or computed on
the fly with ``prefscore.load(...).score``; looked up by (image path, prompt).

A score table has one row per scored image (``image``, optional ``prompt``) and one numeric column per
metric output (``hpsv2``, or ``clip-iqa.quality`` for a metric with several outputs). Image paths are
compared after resolving them to absolute paths, so ``images/x.png`` written from one folder matches
``/data/run/images/x.png``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import PrefscoreError, PromptError

RESERVED = {"image", "prompt", "error", "image_a", "image_b", "label", "images", "ranks", "score", "margin", "split"}


class ScoreColumnWarning(UserWarning):
    """A score column holds cells that are not numbers; they were read as NaN (missing scores)."""


def _coerce(frame, column, source: str) -> tuple[np.ndarray, str | None]:
    """``column`` as float64 with non-numeric cells as NaN, and a message naming them (None when all cells
    are numbers or empty)."""
    import pandas as pd

    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = [i for i in np.flatnonzero(np.isnan(values)) if not pd.isna(raw.iloc[i]) and str(raw.iloc[i]).strip() != ""]
    if not bad:
        return values, None
    line = (lambda i: f"line {i + 2}") if str(source).lower().endswith((".csv", ".tsv")) else (lambda i: f"row {i + 1}")
    shown = ", ".join(f"{line(i)} ({str(raw.iloc[i])[:40]!r})" for i in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return values, (f"{source or 'score table'}: score column {column!r} has {len(bad)} cell(s) that are not numbers, "
                    f"read as missing scores (NaN): {shown}{more}")


def _mostly_numeric(frame, column) -> bool:
    """A text column most of whose non-empty cells are numbers: a score column with a few stray text cells."""
    import pandas as pd

    raw = frame[column]
    present = raw[~raw.isna() & (raw.astype(str).str.strip() != "")]
    if present.empty:
        return False
    numeric = pd.to_numeric(present, errors="coerce").notna().sum()
    return numeric > 0 and numeric * 2 >= len(present)


class ScoreLookupError(PrefscoreError, KeyError):
    """Images of the judgement data that have no score in the score table."""

    def __str__(self) -> str:
        return str(self.args[0])


def direction(column: str, lower_is_better: Sequence[str] = ()) -> bool:
    """``True`` if higher is better for a score column: the registry's ``higher_is_better`` for a
    registered metric name (``name`` or ``name.output``), True for any other column, False for the
    columns listed in ``lower_is_better``."""
    if column in lower_is_better:
        return False
    from ..registry import get_spec
    from ..errors import UnknownMetricError

    for key in (column, column.split(".", 1)[0]):
        try:
            return bool(get_spec(key).higher_is_better)
        except UnknownMetricError:
            continue
    return True


def output_range(column: str) -> tuple[float, float]:
    """The declared ``output_range`` of a registered metric column, ``(-inf, inf)`` for others."""
    from ..registry import get_spec
    from ..errors import UnknownMetricError

    for key in (column, column.split(".", 1)[0]):
        try:
            return tuple(get_spec(key).output_range)  # type: ignore[return-value]
        except UnknownMetricError:
            continue
    return (-math.inf, math.inf)


def _key(path: str, base: Path | None = None) -> str:
    p = Path(str(path)).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p.resolve())


@dataclass
class ScoreTable:
    """Scores of several metrics for a list of images (with their prompts when the metrics read them).

    ``values[c]`` is a float64 array aligned with ``images``; NaN marks an image that could not be
    scored. ``higher_is_better[c]`` gives the direction of column ``c``.
    """

    images: list[str]
    prompts: list[str] | None
    values: dict[str, np.ndarray]
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    source: str = ""
    bases: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        for c, v in self.values.items():
            v = np.asarray(v, dtype=np.float64)
            if v.shape != (len(self.images),):
                raise ValueError(f"score column {c!r} has {v.size} values for {len(self.images)} images")
            self.values[c] = v
            self.higher_is_better.setdefault(c, direction(c))
        self._index: dict[tuple[str, str], int] = {}
        self._by_image: dict[str, list[int]] = {}
        bases = self.bases or (Path.cwd(),)
        for i, image in enumerate(self.images):
            prompt = self.prompts[i] if self.prompts is not None else ""
            for base in bases:
                k = _key(image, base)
                self._index.setdefault((k, prompt), i)
                self._by_image.setdefault(k, [])
                if i not in self._by_image[k]:
                    self._by_image[k].append(i)

    @property
    def columns(self) -> list[str]:
        return list(self.values)

    def __len__(self) -> int:
        return len(self.images)

    def frame(self):
        """The table as a pandas DataFrame (``image``, ``prompt`` if any, then the score columns)."""
        import pandas as pd

        data: dict[str, object] = {"image": self.images}
        if self.prompts is not None:
            data["prompt"] = self.prompts
        data.update(self.values)
        return pd.DataFrame(data)

    def select(self, columns: Sequence[str]) -> "ScoreTable":
        missing = [c for c in columns if c not in self.values]
        if missing:
            raise KeyError(f"score column(s) {', '.join(missing)} not in {self.source or 'the score table'}; "
                           f"it has: {', '.join(self.values) or 'none'}")
        return ScoreTable(self.images, self.prompts, {c: self.values[c] for c in columns},
                          {c: self.higher_is_better[c] for c in columns}, self.source, self.bases)

    def lookup(self, images: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
        """Scores ``(len(images), n_columns)`` for (image, prompt) keys; raises :class:`ScoreLookupError`
        naming the images that are not in the table. Without prompts in the table, images match alone;
        with them, an image scored under a single prompt also matches without a prompt."""
        rows, missing = [], []
        for n, image in enumerate(images):
            k = _key(image)
            prompt = prompts[n] if prompts is not None else ""
            i = self._index.get((k, prompt if self.prompts is not None else ""))
            if i is None and self.prompts is not None:
                candidates = self._by_image.get(k, [])
                if len(candidates) == 1 and (prompts is None or not prompt):
                    i = candidates[0]
            if i is None:
                missing.append(f"{image}" + (f" (prompt {prompt!r})" if prompt and self.prompts is not None else ""))
                rows.append(-1)
            else:
                rows.append(i)
        if missing:
            missing = list(dict.fromkeys(missing))
            shown = "\n".join(f"  {m}" for m in missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ScoreLookupError(f"{len(missing)} image(s) have no score in {self.source or 'the score table'}:\n{shown}")
        idx = np.asarray(rows, dtype=np.int64)
        return np.column_stack([self.values[c][idx] for c in self.values]) if self.values else np.zeros((len(idx), 0))

    @classmethod
    def from_frame(cls, frame, columns: Sequence[str] | None = None, lower_is_better: Sequence[str] = (),
                   source: str = "", bases: Sequence[Path] = ()) -> "ScoreTable":
        """From a DataFrame with ``image`` (and optionally ``prompt``) and numeric score columns.

        ``columns``: the score columns to use (default: every numeric column that is not reserved, and
        every text column most of whose cells are numbers). Cells that are not numbers are read as NaN
        with a :class:`ScoreColumnWarning` naming the column and the first such rows.
        """
        import pandas as pd

        if "image" not in frame.columns:
            raise ValueError(f"{source or 'score table'}: no 'image' column (columns: {', '.join(map(str, frame.columns))})")
        if columns is None:
            columns = [c for c in frame.columns if c not in RESERVED and (pd.api.types.is_numeric_dtype(frame[c])
                                                                            or _mostly_numeric(frame, c))]
            if not columns:
                raise ValueError(f"{source or 'score table'}: no numeric score column besides {', '.join(RESERVED & set(frame.columns))}")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{source or 'score table'}: no column(s) {', '.join(missing)}; columns: {', '.join(map(str, frame.columns))}")
        values = {}
        for c in columns:
            values[str(c)], message = _coerce(frame, c, source)
            if message:
                warnings.warn(message, ScoreColumnWarning, stacklevel=2)
        prompts = None
        if "prompt" in frame.columns:
            prompts = ["" if (p is None or (isinstance(p, float) and math.isnan(p))) else str(p) for p in frame["prompt"]]
        return cls([str(i) for i in frame["image"]], prompts, values,
                   {str(c): direction(str(c), lower_is_better) for c in columns}, source, tuple(bases))

    @classmethod
    def read(cls, path: str | Path, columns: Sequence[str] | None = None, lower_is_better: Sequence[str] = ()) -> "ScoreTable":
        """Read a score file (``prefscore score -o`` output: CSV, JSONL or Parquet). Relative image
        paths are matched against the current folder and against the file's folder."""
        path = Path(path).expanduser()
        frame = read_table(path)
        return cls.from_frame(frame, columns, lower_is_better, str(path), (Path.cwd(), path.parent.resolve()))


def read_table(path: Path):
    """A CSV / TSV / JSONL / Parquet file as a DataFrame (strings kept as strings)."""
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=True)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return pd.read_json(path, lines=True, dtype=False)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def compute_scores(
    images: Sequence[str],
    prompts: Sequence[str] | None,
    metrics: Sequence[str],
    models: Mapping[str, str | None] | None = None,
    options: Mapping[str, Mapping] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
    progress: bool | Callable[[int], None] = False,
    loaded: Mapping[str, object] | None = None,
) -> tuple[ScoreTable, list[tuple[str, str]]]:
    """Score (image, prompt) items with registry metrics: ``prefscore.load(name, model=models[name])``.

    Each metric scores every distinct input it needs once (image-only metrics ignore the prompt).
    Returns the table (columns ``name`` or ``name.output``) and the ``(image, reason)`` of every
    failure (their scores are NaN). ``loaded`` may hold metrics already loaded (name -> Metric).
    """
    from ..registry import load
    from ..scoring import metric_columns

    models = dict(models or {})
    options = {k: dict(v) for k, v in (options or {}).items()}
    values: dict[str, np.ndarray] = {}
    directions: dict[str, bool] = {}
    failures: list[tuple[str, str]] = []
    n = len(images)
    for name in metrics:
        metric = (loaded or {}).get(name) or load(name, model=models.get(name), device=device, dtype=dtype,
                                                  **options.get(name, {}))
        if metric.needs_prompt and prompts is None:
            raise PromptError(f"metric '{name}' scores an image against a prompt, but the judgement data has no prompt column")
        keys = [(images[i], prompts[i] if (prompts is not None and metric.needs_prompt) else "") for i in range(n)]
        unique = list(dict.fromkeys(keys))
        where = {k: j for j, k in enumerate(unique)}
        out, errors = metric.score_records([k[0] for k in unique], [k[1] for k in unique] if metric.needs_prompt else None,
                                           batch_size=batch_size, progress=progress)
        for j, source, reason in errors:
            failures.append((unique[j][0], f"{name}: {reason}"))
        cols = metric_columns(name, metric)
        rows = np.asarray([where[k] for k in keys], dtype=np.int64)
        for c_i, c in enumerate(cols):
            values[c] = out[rows, c_i] if n else np.zeros(0)
            directions[c] = bool(metric.spec.higher_is_better)
    table = ScoreTable(list(images), list(prompts) if prompts is not None else None, values, directions, "on-the-fly scores")
    return table, failures
