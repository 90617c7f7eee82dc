"""Reading the candidates to annotate: a table (CSV/TSV/JSONL/Parquet) or a folder of images.

Table: one row per candidate image, columns ``prompt`` and ``image`` (path, relative to the table
file), optional ``generator`` (the model that made the image), optional ``prompt_id`` (grouping key;
the prompt text otherwise) and optional numeric metric columns (precomputed scores, e.g. the output
of ``prefscore score`` with a ``generator`` column added).

Folder: ``DIR/<prompt-id>/<generator>.<ext>``; the prompt of each ``<prompt-id>`` comes from
``--prompts FILE`` or from ``DIR/<prompt-id>/prompt.txt``.

Candidates of the same prompt are paired with each other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from ..errors import ImageError, PrefscoreError
from ..images import IMAGE_SUFFIXES, check_image

if TYPE_CHECKING:
    import pandas as pd

RESERVED_COLUMNS = {"prompt", "image", "generator", "prompt_id", "error"}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pq"}


class AnnotationInputError(PrefscoreError, ValueError):
    """An input table, folder, prompt file or database content that cannot be used (message names where and why)."""


@dataclass(frozen=True)
class Candidate:
    """One image to compare against the other candidates of the same prompt.

    ``path`` is absolute; ``metrics`` maps a metric column to its score (NaN-free: a missing score
    is left out); ``generator`` is ``None`` when the input has no generator information.
    """

    prompt_key: str
    prompt: str
    path: str
    generator: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricColumn:
    """A precomputed metric: its column name and whether a higher value means a better image."""

    name: str
    higher_is_better: bool = True


def metric_direction(column: str) -> bool:
    """Direction of a metric column: from the prefscore registry when the column (or the part before
    a ``.``, as ``prefscore score`` names multi-output columns) is a registered metric, else higher-is-better."""
    from ..registry import column_metric, get_spec

    found = column_metric(column)
    return get_spec(found[0]).higher_is_better if found is not None else True


def read_table(path: Path) -> pd.DataFrame:
    """A CSV / TSV / JSONL / Parquet file as a DataFrame, with an error naming the file on failure."""
    import pandas as pd  # imported when used: the CLI registers this module's commands at start-up
    suffix = path.suffix.lower()
    if not path.is_file():
        raise AnnotationInputError(f"{path}: file not found")
    try:
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=True)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise AnnotationInputError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    raise AnnotationInputError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv, .jsonl or .parquet")


def _check_image(path: Path, where: str) -> None:
    if not path.is_file():
        raise AnnotationInputError(f"{where}: image {path} not found")
    try:
        check_image(path)
    except ImageError as exc:
        raise AnnotationInputError(f"{where}: {path} is not a readable image ({exc.reason})") from None


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def candidates_from_table(
    path: Path, metrics: Sequence[str] | None = None, lower_is_better: Iterable[str] = ()
) -> tuple[list[Candidate], list[MetricColumn]]:
    """Candidates from a table with columns ``prompt``, ``image`` [, ``generator``, ``prompt_id``, metrics...].

    ``metrics``: the metric columns to use; ``None`` takes every numeric column that is not one of
    ``prompt, image, generator, prompt_id, error``. Directions come from the prefscore registry
    (higher-is-better for unknown names) unless listed in ``lower_is_better``.
    """
    import pandas as pd

    path = Path(path)
    df = read_table(path)
    missing = [c for c in ("prompt", "image") if c not in df.columns]
    if missing:
        raise AnnotationInputError(f"{path}: missing column(s) {', '.join(missing)} (have: {', '.join(map(str, df.columns))})")
    if metrics is None:
        metrics = [c for c in df.columns if c not in RESERVED_COLUMNS and pd.api.types.is_numeric_dtype(df[c])
                   and not pd.api.types.is_bool_dtype(df[c])]
    else:
        unknown = [m for m in metrics if m not in df.columns]
        if unknown:
            raise AnnotationInputError(f"{path}: metric column(s) {', '.join(unknown)} not in the table")
        for m in metrics:
            if not pd.api.types.is_numeric_dtype(df[m]):
                raise AnnotationInputError(f"{path}: metric column {m!r} is not numeric")
    lower = set(lower_is_better)
    stray = lower - set(metrics)
    if stray:
        raise AnnotationInputError(f"{path}: --lower-is-better names {', '.join(sorted(stray))}, which are not metric columns")
    columns = [MetricColumn(str(m), False if m in lower else metric_direction(str(m))) for m in metrics]
    base = path.resolve().parent
    out: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(df.to_dict("records")):
        where = f"{path} row {i + 2 if path.suffix.lower() in ('.csv', '.tsv') else i + 1}"
        prompt = _text(row.get("prompt"))
        image = _text(row.get("image"))
        if prompt is None:
            raise AnnotationInputError(f"{where}: empty prompt")
        if image is None:
            raise AnnotationInputError(f"{where}: empty image path")
        image_path = (base / image).resolve()
        _check_image(image_path, where)
        key = _text(row.get("prompt_id")) or prompt
        if (key, str(image_path)) in seen:
            raise AnnotationInputError(f"{where}: image {image} is listed twice for the same prompt")
        seen.add((key, str(image_path)))
        scores = {}
        for col in columns:
            value = row.get(col.name)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                scores[col.name] = float(value)
        out.append(Candidate(key, prompt, str(image_path), _text(row.get("generator")), scores))
    if not out:
        raise AnnotationInputError(f"{path}: no rows")
    return out, columns


def read_prompts(path: Path) -> dict[str, str]:
    """Prompt-id -> prompt from ``.txt`` (one prompt per line; ids are the 0-based line numbers),
    ``.json`` (an object ``{id: prompt}``) or a table with columns ``prompt_id``, ``prompt``."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationInputError(f"{path}: prompt file not found")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return {str(i): line.strip() for i, line in enumerate(lines) if line.strip()}
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AnnotationInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise AnnotationInputError(f"{path}: expected a JSON object mapping prompt id to prompt text")
        return {str(k): v.strip() for k, v in data.items()}
    df = read_table(path)
    if not {"prompt_id", "prompt"} <= set(df.columns):
        raise AnnotationInputError(f"{path}: expected columns prompt_id, prompt (have: {', '.join(map(str, df.columns))})")
    return {str(k): str(v).strip() for k, v in zip(df["prompt_id"], df["prompt"])}


def _lookup(prompts: dict[str, str], folder: str) -> str | None:
    if folder in prompts:
        return prompts[folder]
    if folder.isdigit() and str(int(folder)) in prompts:  # "0007" matches line 7 of a .txt file
        return prompts[str(int(folder))]
    return None


def candidates_from_folder(root: Path, prompts_file: Path | None = None) -> list[Candidate]:
    """Candidates from ``root/<prompt-id>/<generator>.<ext>`` (hidden entries and non-images ignored)."""
    root = Path(root)
    prompts = read_prompts(prompts_file) if prompts_file is not None else {}
    out: list[Candidate] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            continue
        prompt = _lookup(prompts, sub.name)
        if prompt is None and (sub / "prompt.txt").is_file():
            prompt = (sub / "prompt.txt").read_text(encoding="utf-8").strip()
        if not prompt:
            source = f"in {prompts_file}" if prompts_file is not None else "(no --prompts file given)"
            raise AnnotationInputError(f"{sub}: no prompt for prompt id {sub.name!r} {source} and no {sub / 'prompt.txt'}")
        stems = [p.stem for p in images]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise AnnotationInputError(f"{sub}: several images for generator(s) {', '.join(dupes)} (one file per generator)")
        for p in images:
            _check_image(p, str(sub))
            out.append(Candidate(sub.name, prompt, str(p.resolve()), p.stem))
    if not out:
        raise AnnotationInputError(f"{root}: no images found in {root}/<prompt-id>/<generator>.<ext>")
    return out


def load_candidates(
    source: Path, prompts_file: Path | None = None, metrics: Sequence[str] | None = None, lower_is_better: Iterable[str] = ()
) -> tuple[list[Candidate], list[MetricColumn]]:
    """Candidates (and metric columns) from a table file or a folder, see the module docstring."""
    source = Path(source)
    if source.is_dir():
        if metrics or list(lower_is_better):
            raise AnnotationInputError(f"{source}: metric columns need a table input (CSV/JSONL/Parquet), not a folder")
        return candidates_from_folder(source, prompts_file), []
    if not source.exists():
        raise AnnotationInputError(f"{source}: no such file or folder")
    if source.suffix.lower() not in TABLE_SUFFIXES:
        raise AnnotationInputError(f"{source}: expected a folder or a table (.csv, .tsv, .jsonl, .parquet)")
    if prompts_file is not None:
        raise AnnotationInputError(f"{source}: --prompts is for folder input; a table has its own prompt column")
    return candidates_from_table(source, metrics, lower_is_better)
