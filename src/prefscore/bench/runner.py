"""Score a benchmark set with several metrics (each image decoded once), evaluate it with each paper's
protocol (:func:`prefscore.evaluation.evaluate`) and put the published figures beside the results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ImageError, PrefscoreError
from ..evaluation.scores import ScoreLookupError, ScoreTable, direction, read_table
from ..images import load_image
from .adapters import BenchSet
from .published import Figure, lookup


@dataclass
class BenchConfig:
    """Settings of :func:`run_bench`.

    ``n_boot``: bootstrap replicates for the intervals (resampling prompts, or images for sets without
    prompts). ``level``: interval coverage. ``chunk_size``: images decoded at a time (memory bound).
    ``temperatures``: tau per score column for Pick-a-Pic's tie rule ``|softmax(s / tau)`` difference``
    (metrics scored here use their own ``preference_temperature()``; file columns default to 1).
    """

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int | None = None
    chunk_size: int = 256
    temperatures: dict[str, float] = field(default_factory=dict)


@dataclass
class BenchRow:
    """One line of the benchmark table. ``status``: ``"within CI"``, ``"outside CI"`` or ``""`` (no
    published figure, or no interval)."""

    dataset: str
    metric: str
    statistic: str
    estimate: float
    low: float
    high: float
    n: int
    units: int
    published: Figure | None = None

    @property
    def status(self) -> str:
        if self.published is None or not (math.isfinite(self.low) and math.isfinite(self.high)):
            return ""
        return "within CI" if self.low <= self.published.value <= self.high else "outside CI"

    def as_dict(self) -> dict:
        f = self.published
        return {"dataset": self.dataset, "metric": self.metric, "statistic": self.statistic,
                "estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n, "units": self.units,
                "published": f.value if f else None, "published_tag": f.tag if f else "",
                "published_source": f.source if f else "", "published_condition": f.condition if f else "",
                "status": self.status}


@dataclass
class BenchResult:
    """``rows``: the table; ``evaluation``: the full :class:`prefscore.evaluation.EvaluationResult`
    (every statistic, paired tests between metrics, tie thresholds); ``notes``: what the run did."""

    dataset: str
    rows: list[BenchRow]
    evaluation: object
    notes: list[str]
    scores: ScoreTable

    def frame(self):
        import pandas as pd

        return pd.DataFrame([r.as_dict() for r in self.rows])

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.frame().to_csv(path, index=False)
        return path


def score_items(bench: BenchSet, metrics: Mapping[str, object], batch_size: int | None = None, chunk_size: int = 256,
                progress: Callable[[int], None] | None = None) -> tuple[ScoreTable, list[tuple[str, str]]]:
    """Scores of every item of ``bench`` by every loaded metric (name -> Metric).

    Images are read ``chunk_size`` at a time and each is decoded once for all metrics (as
    :class:`prefscore.scoring.ScoreJob` does for files); a prompt-aware metric gets the item's prompt.
    Returns the table (one column per metric output, NaN where an image failed) and ``(item, reason)``
    for each failure.
    """
    from ..scoring import metric_columns

    keys: list[str] = []
    columns = {c: [] for name, m in metrics.items() for c in metric_columns(name, m)}
    hib = {c: bool(m.spec.higher_is_better) for name, m in metrics.items() for c in metric_columns(name, m)}
    failures: list[tuple[str, str]] = []
    for chunk in bench.chunks(chunk_size):
        decoded, ok = [], []
        for i, item in enumerate(chunk):
            try:
                decoded.append(load_image(item.source, item.key))
                ok.append(i)
            except ImageError as exc:
                failures.append((item.key, exc.reason))
        block = {c: np.full(len(chunk), math.nan) for c in columns}
        for name, metric in metrics.items():
            if not ok:
                break
            prompts = [chunk[i].prompt for i in ok] if metric.needs_prompt else None
            out, errors = metric.score_records(decoded, prompts, batch_size=batch_size)
            for c_i, c in enumerate(metric_columns(name, metric)):
                block[c][ok] = out[:, c_i]
            for j, _, reason in errors:
                failures.append((chunk[ok[j]].key, f"{name}: {reason}"))
        keys += [it.key for it in chunk]
        for c in columns:
            columns[c].append(block[c])
        if progress is not None:
            progress(len(chunk))
    values = {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in columns.items()}
    return ScoreTable(keys, None, values, hib, f"{bench.dataset} (scored)"), failures


def read_score_file(path: str | Path, bench: BenchSet, columns: Sequence[str]) -> ScoreTable:
    """Precomputed scores for ``bench``'s items from a CSV / JSONL / Parquet file with an ``image``
    column (item ids, or absolute paths under the set's image folder) and the score ``columns``."""
    path = Path(path).expanduser()
    frame = read_table(path)
    if "image" not in frame.columns:
        raise ValueError(f"{path}: no 'image' column (columns: {', '.join(map(str, frame.columns))})")
    root = bench.image_root.resolve() if bench.image_root is not None else None

    def to_id(v) -> str:
        s = str(v).strip().replace("\\", "/")
        p = Path(s)
        if root is not None and p.is_absolute():
            try:
                return p.resolve().relative_to(root).as_posix()
            except ValueError:
                return s
        return s[2:] if s.startswith("./") else s

    frame = frame.assign(image=[to_id(v) for v in frame["image"]])
    if "prompt" in frame.columns:
        frame = frame.drop(columns=["prompt"])
    table = ScoreTable.from_frame(frame, list(columns), source=str(path))
    keys = bench.item_keys()
    looked = table.lookup(keys)
    return ScoreTable(keys, None, {c: looked[:, k] for k, c in enumerate(table.columns)},
                      {c: direction(c) for c in table.columns}, str(path))


def _merge(tables: Sequence[ScoreTable], keys: list[str]) -> ScoreTable:
    values, hib = {}, {}
    for t in tables:
        if not t.columns:
            continue
        looked = t.lookup(keys)
        for k, c in enumerate(t.columns):
            if c in values:
                raise ValueError(f"score column {c!r} comes from two sources; rename one")
            values[c] = looked[:, k]
            hib[c] = t.higher_is_better[c]
    return ScoreTable(keys, None, values, hib, "benchmark scores")


def metric_name(column: str) -> str:
    """The registry name behind a score column (``hpsv2``, ``clip-iqa.quality`` -> ``clip-iqa``); the
    column itself when it is not a registered metric."""
    from ..errors import UnknownMetricError
    from ..registry import get_spec

    for key in (column, column.split(".", 1)[0]):
        try:
            return get_spec(key).name
        except UnknownMetricError:
            continue
    return column


def run_bench(
    bench: BenchSet,
    metrics: Sequence[str] = (),
    *,
    models: Mapping[str, str] | None = None,
    options: Mapping[str, Mapping] | None = None,
    scores: str | Path | None = None,
    score_columns: Sequence[str] = (),
    config: BenchConfig | None = None,
    loaded: Mapping[str, object] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchResult:
    """Benchmark ``metrics`` (registry names, loaded with ``models[name]`` and ``options[name]``) and
    the precomputed ``score_columns`` of the file ``scores`` on ``bench`` with its paper's protocol."""
    from ..evaluation import EvalConfig, evaluate
    from ..registry import load

    config = config or BenchConfig()
    if not metrics and not score_columns:
        raise ValueError("nothing to benchmark: name metrics to score, or score columns of a --scores file")
    if score_columns and scores is None:
        raise ValueError("score columns were named but no score file was given")
    notes = list(bench.notes)
    tables = []
    temps = dict(config.temperatures)
    if scores is not None and score_columns:
        tables.append(read_score_file(scores, bench, score_columns))
        for c in score_columns:
            if bench.tie_mode == "pickapic" and c not in temps:
                temps[c] = 1.0
                notes.append(f"{c}: no temperature given for the tie rule; tau = 1 (pass --temperature {c}=TAU)")
    if metrics:
        loaded = dict(loaded or {})
        for name in metrics:
            if name not in loaded:
                loaded[name] = load(name, model=(models or {}).get(name), device=config.device, dtype=config.dtype,
                                    **dict((options or {}).get(name, {})))
        use = {n: loaded[n] for n in metrics}
        for n, m in use.items():
            if m.needs_prompt and not bench.judgements.has_prompts:
                raise PrefscoreError(f"metric '{n}' scores an image against a prompt, but {bench.dataset} has no prompts")
        table, failures = score_items(bench, use, config.batch_size, config.chunk_size, progress)
        tables.append(table)
        for key, reason in failures[:20]:
            notes.append(f"could not score {key}: {reason}")
        if len(failures) > 20:
            notes.append(f"... and {len(failures) - 20} more scoring failures")
        if bench.tie_mode == "pickapic":
            from ..scoring import metric_columns

            for n, m in use.items():
                for c in metric_columns(n, m):
                    if c in temps:
                        continue
                    try:
                        temps[c] = float(m.preference_temperature())
                    except NotImplementedError:
                        temps[c] = 1.0
                        notes.append(f"{c}: the metric has no preference temperature; tau = 1 in the tie rule")
    merged = _merge(tables, bench.item_keys())
    logistic = bench.logistic
    n_params = {"4pl": 4, "5pl": 5}.get(logistic, 0)
    if bench.kind == "ratings" and len(bench.judgements) <= n_params:
        logistic = "none"
        notes.append(f"only {len(bench.judgements)} ratings: too few to fit the {bench.logistic} logistic, "
                     f"mapped statistics are not computed")
    eval_config = EvalConfig(n_boot=config.n_boot, level=config.level, seed=config.seed, tie_mode=bench.tie_mode,
                             temperatures=temps, logistic=logistic)
    result = evaluate(bench.judgements, scores=merged, columns=bench.columns or None, config=eval_config)
    ties_reported = "accuracy_ties" in bench.statistics
    notes += [n for n in result.notes if ties_reported or ("tie threshold" not in n and "accuracy_ties" not in n)]
    rows = []
    table = result.table
    overall = table[(table.group == "all") & (table.level == "all")]
    for column in result.metrics:
        base = metric_name(column)
        for stat in bench.statistics:
            hit = overall[(overall.metric == column) & (overall.statistic == stat)]
            if hit.empty:
                continue
            r = hit.iloc[0]
            rows.append(BenchRow(bench.dataset, column, stat, float(r.estimate), float(r.low), float(r.high), int(r.n),
                                 int(r.units), lookup(bench.dataset, base, stat)))
    return BenchResult(bench.dataset, rows, result, notes, merged)


__all__ = ["BenchConfig", "BenchResult", "BenchRow", "ScoreLookupError", "metric_name", "read_score_file",
           "run_bench", "score_items"]
