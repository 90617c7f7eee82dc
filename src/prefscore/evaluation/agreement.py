"""Agreement of metrics with human judgements: pairs (with ties), k-way rankings, or ratings (MOS).

Statistics (all in [0, 1] for accuracies, [-1, 1] for correlations; higher is better):

* ``accuracy`` - tie-free pairwise accuracy: over comparisons with a strict human preference, the
  fraction where the metric orders the two images the same way; equal scores count as wrong, human
  ties are skipped. This is ImageReward's pooled test protocol (on rankings: all C(k, 2) strictly
  ordered pairs pooled) and trl's ``mean(r_chosen > r_rejected)``.
* ``accuracy_ties`` - Pick-a-Pic's protocol: predict "tie" when the score difference is at most a
  threshold t, else the higher-scored image; credit 1 for the right call, 0.5 when exactly one of
  (prediction, label) is a tie, 0 otherwise. t is chosen on a validation split (a ``split`` column
  with ``validation``/``test`` rows), or by 2-fold cross-fitting over prompts when there is none.
* ``inversion`` (rankings only) - HPSv2's per-ranking score ``1 - discordant / (k (k - 1) / 2)``
  averaged over rankings (human ties are never discordant; equal scores keep list order).
* ``srcc``, ``krcc``, ``plcc`` (ratings) raw, and ``*_mapped`` after the 4-parameter logistic
  mapping (5-parameter optional) fitted on all rows, plus ``rmse_mapped`` in MOS units.

Every statistic has a percentile bootstrap interval that resamples prompts (the rows sharing a prompt
are not independent), and every pair of metrics gets a paired bootstrap test on the same replicates.
With fewer prompts than :func:`~prefscore.evaluation.stats.min_units` (6 at 95%) the records are
resampled instead (column ``resampled`` says which); with fewer records too, intervals and p-values
are NaN ("n/a") rather than a false certainty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .scores import ScoreTable, compute_scores, direction
from .stats import (
    BootstrapPlan,
    BootstrapSamples,
    Interval,
    choose_resampling,
    min_units,
    fit_logistic,
    krcc,
    plcc,
    rmse,
    srcc,
    weighted_mean,
)

ACCURACY = "accuracy"
ACCURACY_TIES = "accuracy_ties"
INVERSION = "inversion"
RATING_STATS = ("srcc", "krcc", "plcc", "srcc_mapped", "krcc_mapped", "plcc_mapped", "rmse_mapped")

STAT_LABELS = {
    ACCURACY: "pairwise accuracy, tie-free (ImageReward pooled protocol; human ties skipped, equal scores wrong)",
    ACCURACY_TIES: "pairwise accuracy with ties (Pick-a-Pic protocol: tie threshold from a validation split, half credit)",
    INVERSION: "HPSv2 inversion score (1 - discordant pairs / all pairs, mean over rankings)",
    "srcc": "Spearman rank correlation (SRCC)",
    "krcc": "Kendall rank correlation (KRCC, tau-b)",
    "plcc": "Pearson linear correlation (PLCC), raw scores",
    "srcc_mapped": "SRCC after the logistic mapping",
    "krcc_mapped": "KRCC after the logistic mapping",
    "plcc_mapped": "PLCC after the logistic mapping (IQA convention)",
    "rmse_mapped": "RMSE after the logistic mapping (MOS units; lower is better)",
}

VALIDATION_NAMES = {"validation", "val", "valid", "dev"}
TEST_NAMES = {"test"}


@dataclass
class EvalConfig:
    """Settings of :func:`evaluate`.

    ``n_boot``: bootstrap replicates (0 disables intervals and tests). ``level``: interval coverage.
    ``tie_mode``: ``"difference"`` (threshold on ``|s_a - s_b|`` in score units, chosen among the
    validation quantiles of that difference) or ``"pickapic"`` (threshold on ``|p_a - p_b|`` with
    ``p = softmax(s / tau)``, chosen from {0, 0.1, ..., 1} exactly as Pick-a-Pic; tau is the metric's
    ``preference_temperature()`` when it is loaded here, else ``temperatures[column]`` or 1).
    ``folds``: cross-fitting folds over prompts when there is no split column. ``logistic``: ``"4pl"``,
    ``"5pl"`` or ``"none"``. ``group_by``: columns of the judgement file to break results down by.
    ``unit``: a column naming the resampling unit (default: the prompt; the row without prompts).
    """

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    tie_mode: str = "difference"
    temperatures: dict[str, float] = field(default_factory=dict)
    folds: int = 2
    logistic: str = "4pl"
    group_by: tuple[str, ...] = ()
    unit: str | None = None
    split_column: str = "split"

    def __post_init__(self) -> None:
        if self.tie_mode not in ("difference", "pickapic"):
            raise ValueError(f"tie_mode must be 'difference' or 'pickapic', not {self.tie_mode!r}")
        if self.logistic not in ("4pl", "5pl", "none"):
            raise ValueError(f"logistic must be '4pl', '5pl' or 'none', not {self.logistic!r}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), not {self.level}")
        if self.n_boot < 0:
            raise ValueError("n_boot must be >= 0")
        if self.folds < 2:
            raise ValueError("folds must be at least 2")
        self.group_by = tuple(self.group_by)


# -- the Pick-a-Pic tie protocol ------------------------------------------------------------------


def tie_statistic(delta, mode: str = "difference", temperature: float = 1.0) -> np.ndarray:
    """What the tie threshold is compared with: ``|delta|`` or ``|p_a - p_b| = |tanh(delta / (2 tau))|``."""
    delta = np.asarray(delta, dtype=np.float64)
    if mode == "difference":
        return np.abs(delta)
    if mode == "pickapic":
        return np.abs(np.tanh(delta / (2.0 * temperature)))
    raise ValueError(f"unknown tie mode {mode!r}")


def tie_credits(delta, human, threshold: float, mode: str = "difference", temperature: float = 1.0) -> np.ndarray:
    """Pick-a-Pic credit per comparison: predict a tie when the tie statistic is <= ``threshold``,
    else the higher score; 1 if the prediction equals the label, 0.5 if exactly one of them is a tie,
    0 otherwise. ``delta = s_a - s_b`` (oriented so higher is better); ``human`` in {+1 (a), -1 (b), 0 (tie)}."""
    delta = np.asarray(delta, dtype=np.float64)
    human = np.asarray(human)
    pred = np.where(tie_statistic(delta, mode, temperature) <= threshold, 0, np.sign(delta)).astype(np.int64)
    credit = np.where(pred == human, 1.0, np.where((pred == 0) != (human == 0), 0.5, 0.0))
    return credit


PICKAPIC_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def choose_tie_threshold(delta, human, mode: str = "difference", temperature: float = 1.0) -> tuple[float, float]:
    """Threshold maximising the mean credit on validation comparisons: ``(threshold, accuracy)``.

    ``pickapic``: the grid {0, 0.1, ..., 1}; ``difference``: 0 and the 0..100% quantiles (1% steps) of
    ``|delta|``. The smallest threshold wins ties.
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.size == 0:
        return 0.0, math.nan
    if mode == "pickapic":
        grid = np.asarray(PICKAPIC_GRID)
    else:
        grid = np.unique(np.concatenate([[0.0], np.quantile(np.abs(delta), np.linspace(0, 1, 101))]))
    accs = [float(tie_credits(delta, human, t, mode, temperature).mean()) for t in grid]
    best = int(np.argmax(accs))
    return float(grid[best]), accs[best]


def tie_free_correct(delta, human) -> np.ndarray:
    """1.0 where the metric strictly orders the pair as the human did (human ties: NaN)."""
    delta = np.asarray(delta, dtype=np.float64)
    human = np.asarray(human)
    out = (np.sign(delta) == human).astype(np.float64)
    out[human == 0] = np.nan
    return out


def inversion_scores(scores, ranks) -> float:
    """HPSv2's inversion score of one ranking: ``1 - discordant / (k (k - 1) / 2)``.

    ``scores`` (higher is better) give the predicted order, ties kept in list order (a stable sort);
    ``ranks`` are human ranks (1 = best); pairs tied by the humans are never discordant.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.float64)
    k = scores.size
    order = np.argsort(-scores, kind="stable")
    predicted = np.empty(k)
    predicted[order] = np.arange(k)
    bad = 0
    for i, j in combinations(range(k), 2):
        if (predicted[i] > predicted[j] and ranks[i] < ranks[j]) or (predicted[i] < predicted[j] and ranks[i] > ranks[j]):
            bad += 1
    return 1.0 - bad / (k * (k - 1) / 2)


# -- the judgement view ---------------------------------------------------------------------------


@dataclass
class _View:
    """Judgements flattened for scoring: ``items`` (image, prompt) to score, plus either comparisons
    between items (pairs, rankings) or one human score per item (ratings)."""

    kind: str
    item_images: list[str]
    item_prompts: list[str] | None
    rows_record: np.ndarray  # record index of each row (comparison or rating)
    units: np.ndarray  # resampling unit of each row
    columns: dict[str, np.ndarray]  # extra columns per row (group_by, split)
    ci: np.ndarray | None = None  # comparisons: item indices and human preference
    cj: np.ndarray | None = None
    human: np.ndarray | None = None
    mos: np.ndarray | None = None  # ratings: human score per row (= per item)
    inline: dict[str, np.ndarray] = field(default_factory=dict)  # item-level scores from the judgement file

    @property
    def n_rows(self) -> int:
        return int(self.rows_record.size)


def _extra_columns(judgements, path: Path | None, wanted: Sequence[str], given: Mapping[str, Sequence] | None) -> dict[str, list]:
    """Per-record values of extra columns (grouping, split, inline scores) from the judgement file."""
    out: dict[str, list] = {}
    if given:
        for k, v in given.items():
            if len(v) != len(judgements):
                raise ValueError(f"column {k!r} has {len(v)} values for {len(judgements)} records")
            out[k] = list(v)
    todo = [c for c in wanted if c not in out]
    if todo and path is not None:
        from .. import data

        _, rows = data.read_rows(path)
        if len(rows) != len(judgements):
            raise ValueError(f"{path}: {len(rows)} rows but {len(judgements)} records; cannot align extra columns")
        for c in todo:
            if any(c in r for _, r in rows):
                out[c] = [r.get(c) for _, r in rows]
    return out


def _remap(path: str, old_root: Path, new_root: Path) -> str:
    try:
        return str(new_root / Path(path).relative_to(old_root))
    except ValueError:
        return path


def build_view(judgements, extra: Mapping[str, list], unit: str | None, inline_columns: Sequence[str] = ()) -> _View:
    """Flatten :class:`prefscore.data.Judgements` into items and comparisons/ratings."""
    from ..data import Pair, Ranking, Rating

    has_prompts = judgements.has_prompts
    groups = judgements.groups
    if unit is not None:
        if unit not in extra:
            raise ValueError(f"unit column {unit!r} not found in the judgement file")
        record_units = ["" if v is None else str(v) for v in extra[unit]]
    else:
        record_units = [str(g) for g in groups]
    images: list[str] = []
    prompts: list[str] = []
    rec, ci, cj, human, mos = [], [], [], [], []
    inline: dict[str, list[float]] = {c: [] for c in inline_columns}
    kind = judgements.kind
    for r_i, r in enumerate(judgements.records):
        if isinstance(r, Pair):
            a = len(images)
            images += [r.image_a, r.image_b]
            prompts += [r.prompt, r.prompt]
            rec.append(r_i)
            ci.append(a)
            cj.append(a + 1)
            human.append({"a": 1, "b": -1, "tie": 0}[r.label])
            for c in inline_columns:
                inline[c] += [_num(extra.get(f"{c}_a"), r_i), _num(extra.get(f"{c}_b"), r_i)]
        elif isinstance(r, Ranking):
            base = len(images)
            images += list(r.images)
            prompts += [r.prompt] * len(r.images)
            for i, j in combinations(range(len(r.images)), 2):
                rec.append(r_i)
                ci.append(base + i)
                cj.append(base + j)
                human.append(0 if r.ranks[i] == r.ranks[j] else (1 if r.ranks[i] < r.ranks[j] else -1))
            for c in inline_columns:
                values = extra.get(c)
                vals = _list_num(values[r_i] if values is not None else None, len(r.images))
                inline[c] += vals
        elif isinstance(r, Rating):
            images.append(r.image)
            prompts.append(r.prompt)
            rec.append(r_i)
            mos.append(r.score)
            for c in inline_columns:
                inline[c].append(_num(extra.get(c), r_i))
    rec_arr = np.asarray(rec, dtype=np.int64)
    cols = {k: np.asarray(["" if v[i] is None else str(v[i]) for i in rec_arr], dtype=object) for k, v in extra.items()}
    view = _View(kind, images, prompts if has_prompts else None, rec_arr,
                 np.asarray([record_units[i] for i in rec_arr], dtype=object), cols,
                 inline={c: np.asarray(v, dtype=np.float64) for c, v in inline.items()})
    if kind == "ratings":
        view.mos = np.asarray(mos, dtype=np.float64)
    else:
        view.ci = np.asarray(ci, dtype=np.int64)
        view.cj = np.asarray(cj, dtype=np.int64)
        view.human = np.asarray(human, dtype=np.int64)
    return view


def _num(values, i: int) -> float:
    if values is None:
        return math.nan
    try:
        return float(values[i])
    except (TypeError, ValueError):
        return math.nan


def _list_num(value, k: int) -> list[float]:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != k:
        return [math.nan] * k
    out = []
    for v in value:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return out


# -- results --------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Agreement of each metric with the human judgements.

    ``table``: one row per (group column, level, metric, statistic) with ``estimate``, ``low``,
    ``high`` (bootstrap interval; NaN when not available), ``n`` (comparisons or ratings used),
    ``units`` (units of the requested kind, e.g. prompts), ``resampled`` (what the bootstrap resampled:
    ``"prompt"``, ``"record"`` when there were too few prompts, ``""`` when the interval is not
    available) and ``resampled_units``; the overall rows have group ``"all"``. ``tests``: paired bootstrap tests of
    ``metric_a - metric_b`` for every statistic and pair of metrics (overall data). ``item_scores``:
    the per-image scores used (for reports). ``thresholds``: the chosen tie thresholds per metric.
    """

    kind: str
    metrics: list[str]
    table: "object"  # pandas DataFrame
    tests: "object"  # pandas DataFrame
    thresholds: dict[str, list[float]]
    settings: dict
    notes: list[str]
    samples: BootstrapSamples | None
    item_scores: ScoreTable
    higher_is_better: dict[str, bool]

    def get(self, metric: str, statistic: str, group: str = "all", level: str = "all") -> Interval:
        t = self.table
        row = t[(t.metric == metric) & (t.statistic == statistic) & (t.group == group) & (t.level == level)]
        if row.empty:
            raise KeyError(f"no {statistic!r} for metric {metric!r} in group {group}={level}")
        r = row.iloc[0]
        return Interval(float(r.estimate), float(r.low), float(r.high), self.settings.get("level", 0.95))

    def statistics(self) -> list[str]:
        return list(dict.fromkeys(self.table.statistic))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "metrics": self.metrics,
            "higher_is_better": self.higher_is_better,
            "settings": self.settings,
            "thresholds": self.thresholds,
            "notes": self.notes,
            "agreement": _records(self.table),
            "tests": _records(self.tests),
            "statistics": {s: STAT_LABELS.get(s, s) for s in self.statistics()},
        }

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``agreement.csv``, ``tests.csv``, ``agreement.json`` (everything) and ``item_scores.csv``."""
        import json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"agreement_csv": out / "agreement.csv", "tests_csv": out / "tests.csv",
                 "json": out / "agreement.json", "scores_csv": out / "item_scores.csv"}
        self.table.to_csv(paths["agreement_csv"], index=False)
        self.tests.to_csv(paths["tests_csv"], index=False)
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        self.item_scores.frame().to_csv(paths["scores_csv"], index=False)
        return paths


def resampling_label(settings: dict) -> str:
    """What the overall intervals resampled, e.g. ``prompts resampled`` or
    ``records resampled (fallback: only 1 prompt, fewer than 6)``, or why there are none."""
    r = settings.get("resampling")
    if not settings.get("n_boot"):
        return "no bootstrap"
    if not r:
        return f"{settings.get('resample_unit', 'prompt')}s resampled"
    if r.get("resampled") is None:
        return f"CIs and p-values n/a: {r.get('reason')}"
    label = f"{r['resampled']}s resampled"
    return f"{label} (fallback: {r['reason']})" if r.get("fallback") else label


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _records(frame) -> list[dict]:
    rows = frame.to_dict(orient="records")
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return rows


# -- evaluation -----------------------------------------------------------------------------------


def evaluate(
    judgements,
    *,
    scores: ScoreTable | str | Path | None = None,
    score_columns: Sequence[str] | None = None,
    metrics: Sequence[str] = (),
    models: Mapping[str, str | None] | None = None,
    options: Mapping[str, Mapping] | None = None,
    images_root: str | Path | None = None,
    columns: Mapping[str, Sequence] | None = None,
    lower_is_better: Sequence[str] = (),
    composites: Mapping[str, object] | None = None,
    config: EvalConfig | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
    progress: bool | Callable[[int], None] = False,
) -> EvaluationResult:
    """Agreement of metrics with human judgements, with bootstrap intervals and paired tests.

    ``judgements``: a judgement file (pairs, rankings or ratings; see :mod:`prefscore.data`) or a
    :class:`prefscore.data.Judgements`. The scores come from any mix of:

    * ``scores``: a score table (``prefscore score -o`` output, or :class:`ScoreTable`) looked up by
      image path and prompt; ``score_columns`` picks columns (default: all numeric ones);
    * inline columns of the judgement file named in ``score_columns`` when no ``scores`` table is
      given: ``<name>_a``/``<name>_b`` for pairs, ``<name>`` for ratings, a JSON list for rankings;
    * ``metrics``: registry names scored on the fly (``prefscore.load(name, model=models[name])``).

    ``images_root``: the folder the relative image paths of the file refer to (default: the file's
    folder). ``columns``: extra per-record columns for a Judgements object (group_by, split, unit).
    ``lower_is_better``: score columns whose direction is reversed (registered metrics know theirs).
    ``composites``: name -> :class:`Calibration` (or its file), evaluated as extra columns computed
    from the component columns above (no model is loaded for them).
    """
    import pandas as pd

    from ..data import Judgements, load_judgements

    config = config or EvalConfig()
    notes: list[str] = []
    path: Path | None = None
    wanted = list(config.group_by) + [config.split_column] + ([config.unit] if config.unit else [])
    inline_names: list[str] = []
    if not isinstance(judgements, Judgements):
        path = Path(judgements).expanduser()
        need_files = bool(metrics) and images_root is None
        import warnings

        from ..data import DuplicateRowsWarning

        with warnings.catch_warnings():  # said in the notes instead (console, JSON, report)
            warnings.simplefilter("ignore", DuplicateRowsWarning)
            judgements = load_judgements(path, check_images=need_files)
    notes.extend(judgements.warnings)
    if images_root is not None:
        root = Path(images_root).expanduser()
        old = Path(judgements.source).parent if judgements.source else Path.cwd()
        judgements = _rebase(judgements, old, root)
        if metrics:
            missing = [p for p in judgements.images() if not Path(p).is_file()]
            if missing:
                from ..data import DataError

                raise DataError(str(root), [(p, "image file not found") for p in missing[:200]])
    if scores is None and score_columns:
        inline_names = list(score_columns)
        for c in inline_names:
            if judgements.kind == "pairs":
                wanted += [f"{c}_a", f"{c}_b"]
            else:
                wanted.append(c)
    extra = _extra_columns(judgements, path, wanted, columns)
    for g in config.group_by:
        if g not in extra:
            raise ValueError(f"group_by column {g!r} is not in the judgement data")
    for c in inline_names:
        needed = [f"{c}_a", f"{c}_b"] if judgements.kind == "pairs" else [c]
        if any(n not in extra for n in needed):
            raise ValueError(f"score column {c!r}: the judgement file has no column(s) {', '.join(n for n in needed if n not in extra)}")
    view = build_view(judgements, extra, config.unit, inline_names)

    # -- item scores ------------------------------------------------------------------------------
    names: list[str] = []
    values: dict[str, np.ndarray] = {}
    hib: dict[str, bool] = {}
    temps = dict(config.temperatures)
    if scores is not None:
        table = scores if isinstance(scores, ScoreTable) else ScoreTable.read(scores, score_columns, lower_is_better)
        if score_columns and isinstance(scores, ScoreTable):
            table = table.select(score_columns)
        looked = table.lookup(view.item_images, view.item_prompts)
        for k, c in enumerate(table.columns):
            values[c] = looked[:, k]
            hib[c] = table.higher_is_better[c] if c not in lower_is_better else False
    for c in inline_names:
        values[c] = view.inline[c]
        hib[c] = direction(c, lower_is_better)
    if metrics:
        from ..registry import load

        loaded = {}
        for name in metrics:
            loaded[name] = load(name, model=(models or {}).get(name), device=device, dtype=dtype, **dict((options or {}).get(name, {})))
        computed, failures = compute_scores(view.item_images, view.item_prompts, list(metrics), models, options,
                                            device, dtype, batch_size, progress, loaded)
        for f_img, reason in failures[:20]:
            notes.append(f"could not score {f_img}: {reason}")
        if len(failures) > 20:
            notes.append(f"... and {len(failures) - 20} more scoring failures")
        for c in computed.columns:
            values[c] = computed.values[c]
            hib[c] = computed.higher_is_better[c] if c not in lower_is_better else False
            base = c if c in loaded else c.split(".", 1)[0]  # metric names may hold dots (hpsv2.1)
            if c not in temps and config.tie_mode == "pickapic":
                try:
                    temps[c] = float(loaded[base].preference_temperature())
                except NotImplementedError:
                    pass
    for cname, cal in (composites or {}).items():
        from .composite import Calibration

        cal = cal if isinstance(cal, Calibration) else Calibration.load(cal)
        values[cname] = cal.apply(values)
        hib[cname] = True
    names = list(values)
    if not names:
        raise ValueError("nothing to evaluate: give scores=, score_columns= (inline columns) or metrics=")
    item_matrix = np.column_stack([values[c] if hib[c] else -values[c] for c in names])

    # rows whose items miss a score for any metric are dropped for every metric (paired comparisons)
    if view.kind == "ratings":
        bad_rows = ~np.isfinite(item_matrix).all(axis=1)
    else:
        bad_rows = ~(np.isfinite(item_matrix[view.ci]).all(axis=1) & np.isfinite(item_matrix[view.cj]).all(axis=1))
    if bad_rows.any():
        notes.append(f"{int(bad_rows.sum())} of {view.n_rows} {'ratings' if view.kind == 'ratings' else 'comparisons'} "
                     f"dropped: an image has no score (NaN) for at least one metric")

    unit_name = config.unit or ("prompt" if judgements.has_prompts else "record")
    if view.kind == "ratings":
        table_rows, samples, fits, overall = _evaluate_ratings(view, item_matrix, names, ~bad_rows, config, notes, unit_name)
        thresholds: dict[str, list[float]] = {}
        settings_extra = {"logistic_fits": fits}
    else:
        table_rows, samples, thresholds, overall = _evaluate_comparisons(view, item_matrix, names, ~bad_rows, config, temps,
                                                                         notes, unit_name)
        settings_extra = {"temperatures": {c: temps.get(c, 1.0) for c in names}} if config.tie_mode == "pickapic" else {}

    if config.n_boot > 0:
        if overall.fallback:
            notes.append(f"bootstrap intervals and p-values resample records, not {unit_name}s: {overall.reason} (at least "
                         f"{min_units(config.level)} are needed at the {config.level:.0%} level); records sharing a "
                         f"{unit_name} are treated as independent, so the intervals are too narrow if they are not")
        elif not overall.available:
            notes.append(f"no bootstrap intervals or p-values: {overall.reason} (at least {min_units(config.level)} "
                         f"independent units are needed at the {config.level:.0%} level)")

    table = pd.DataFrame(table_rows, columns=["group", "level", "metric", "statistic", "estimate", "low", "high", "n", "units",
                                              "resampled", "resampled_units"])
    tests_rows = []
    if samples is not None and len(names) > 1:
        stats_names = list(dict.fromkeys(s for s in table.statistic))
        for stat in stats_names:
            for a, b in combinations(names, 2):
                ka, kb = f"{a}|{stat}", f"{b}|{stat}"
                if ka not in samples.index or kb not in samples.index:
                    continue
                t = samples.test(ka, kb)
                tests_rows.append({"statistic": stat, "metric_a": a, "metric_b": b, "difference": t.difference.estimate,
                                   "low": t.difference.low, "high": t.difference.high, "p_value": t.p_value,
                                   "n_boot": t.n_boot, "resampled": overall.unit if overall.available else "",
                                   "resampled_units": overall.n_units if overall.available else 0})
    elif not overall.available and config.n_boot > 0 and len(names) > 1:
        for stat in dict.fromkeys(table.statistic):
            for a, b in combinations(names, 2):
                ea, eb = (float(table[(table.group == "all") & (table.metric == m) & (table.statistic == stat)].estimate.iloc[0])
                          for m in (a, b))
                tests_rows.append({"statistic": stat, "metric_a": a, "metric_b": b, "difference": ea - eb,
                                   "low": math.nan, "high": math.nan, "p_value": math.nan, "n_boot": 0,
                                   "resampled": "", "resampled_units": 0})
    tests = pd.DataFrame(tests_rows, columns=["statistic", "metric_a", "metric_b", "difference", "low", "high", "p_value", "n_boot",
                                              "resampled", "resampled_units"])

    # item-level scores (deduplicated) for reports
    seen: dict[tuple[str, str], int] = {}
    for i, img in enumerate(view.item_images):
        seen.setdefault((img, view.item_prompts[i] if view.item_prompts is not None else ""), i)
    keep = np.asarray(list(seen.values()), dtype=np.int64)
    item_scores = ScoreTable([view.item_images[i] for i in keep],
                             [view.item_prompts[i] for i in keep] if view.item_prompts is not None else None,
                             {c: values[c][keep] for c in names}, dict(hib), "evaluation items")
    settings = {**asdict(config), "source": judgements.source, "n_records": len(judgements), **settings_extra}
    settings["group_by"] = list(config.group_by)
    settings["resample_unit"] = unit_name
    settings["resampling"] = {"requested": unit_name, "min_units": min_units(config.level),
                              "resampled": overall.unit if overall.available and config.n_boot > 0 else None,
                              "resampled_units": overall.n_units if overall.available else 0,
                              "fallback": overall.fallback, "reason": overall.reason,
                              "description": overall.describe() if config.n_boot > 0 else "no bootstrap"}
    return EvaluationResult(view.kind, names, table, tests, thresholds, settings, notes, samples, item_scores, hib)


def _rebase(judgements, old: Path, new: Path):
    from ..data import Judgements, Pair, Ranking, Rating

    recs = []
    for r in judgements.records:
        if isinstance(r, Pair):
            recs.append(Pair(r.prompt, _remap(r.image_a, old, new), _remap(r.image_b, old, new), r.label, r.margin, r.row))
        elif isinstance(r, Ranking):
            recs.append(Ranking(r.prompt, tuple(_remap(i, old, new) for i in r.images), r.ranks, r.row))
        else:
            recs.append(Rating(r.prompt, _remap(r.image, old, new), r.score, r.row))
    return Judgements(judgements.kind, recs, judgements.source, judgements.has_prompts, judgements.groups,
                      judgements.warnings)


def _folds(units: np.ndarray, k: int, seed: int) -> np.ndarray:
    unique = np.unique(units.astype(str))
    order = np.random.default_rng(seed).permutation(unique.size)
    fold_of = {unique[u]: pos % k for pos, u in enumerate(order)}
    return np.asarray([fold_of[str(u)] for u in units], dtype=np.int64)


def _evaluate_comparisons(view: _View, items: np.ndarray, names: list[str], valid: np.ndarray, config: EvalConfig,
                          temps: Mapping[str, float], notes: list[str], unit_name: str):
    delta_all = items[view.ci] - items[view.cj]  # (n_comp, M), oriented
    human_all = view.human
    split = view.columns.get(config.split_column)
    if split is not None:
        lowered = np.asarray([s.strip().lower() for s in split], dtype=object)
        val_mask = np.isin(lowered, list(VALIDATION_NAMES)) & valid
        eval_mask = np.isin(lowered, list(TEST_NAMES)) & valid
        if not val_mask.any() or not eval_mask.any():
            raise ValueError(f"column {config.split_column!r} must have both validation rows ({', '.join(sorted(VALIDATION_NAMES))}) "
                             f"and test rows; found values {sorted(set(lowered))}")
        other = int((~np.isin(lowered, list(VALIDATION_NAMES | TEST_NAMES))).sum())
        if other:
            notes.append(f"{other} rows whose {config.split_column!r} is neither validation nor test were not used")
        notes.append(f"tie thresholds chosen on {int(val_mask.sum())} validation comparisons; every statistic is "
                     f"computed on the {int(eval_mask.sum())} test comparisons")
    else:
        eval_mask = valid.copy()
        val_mask = None
    ev = np.flatnonzero(eval_mask)
    delta, human = delta_all[ev], human_all[ev]
    units = view.units[ev]
    n_ties = int((human == 0).sum())
    thresholds: dict[str, list[float]] = {}
    # tie credits (cross-fitted when there is no split)
    credits = np.zeros_like(delta)
    if val_mask is not None:
        vi = np.flatnonzero(val_mask)
        for m, c in enumerate(names):
            t, _ = choose_tie_threshold(delta_all[vi, m], human_all[vi], config.tie_mode, temps.get(c, 1.0))
            thresholds[c] = [t]
            credits[:, m] = tie_credits(delta[:, m], human, t, config.tie_mode, temps.get(c, 1.0))
    else:
        n_units = np.unique(units.astype(str)).size
        if n_units < config.folds:
            notes.append("too few units (prompts) to cross-fit the tie threshold: it was chosen and scored on the same data")
            for m, c in enumerate(names):
                t, _ = choose_tie_threshold(delta[:, m], human, config.tie_mode, temps.get(c, 1.0))
                thresholds[c] = [t]
                credits[:, m] = tie_credits(delta[:, m], human, t, config.tie_mode, temps.get(c, 1.0))
        else:
            fold = _folds(units, config.folds, config.seed)
            for m, c in enumerate(names):
                thresholds[c] = []
                for f in range(config.folds):
                    fit, test = fold != f, fold == f
                    t, _ = choose_tie_threshold(delta[fit, m], human[fit], config.tie_mode, temps.get(c, 1.0))
                    thresholds[c].append(t)
                    credits[test, m] = tie_credits(delta[test, m], human[test], t, config.tie_mode, temps.get(c, 1.0))
            notes.append(f"tie thresholds chosen by {config.folds}-fold cross-fitting over resampling units (no "
                         f"{config.split_column!r} column); the thresholds of each fold are listed")
    if n_ties == 0:
        notes.append("the human data has no ties: accuracy_ties only penalises predicted ties")

    stats_list = [ACCURACY, ACCURACY_TIES] + ([INVERSION] if view.kind == "rankings" else [])
    M = len(names)
    S = len(stats_list)
    V = np.zeros((ev.size, M * S))
    W = np.zeros((ev.size, M * S))
    strict = human != 0
    rec = view.rows_record[ev]
    if view.kind == "rankings":
        per_rec = np.bincount(rec, minlength=int(rec.max()) + 1 if rec.size else 0).astype(np.float64)
    for m in range(M):
        d = delta[:, m]
        base = m * S
        V[:, base] = np.where(strict, np.sign(d) == human, 0.0)
        W[:, base] = strict.astype(np.float64)
        V[:, base + 1] = credits[:, m]
        W[:, base + 1] = 1.0
        if view.kind == "rankings":
            # stable order: with equal scores the image listed first (i) is ranked higher
            discordant = ((human == 1) & (d < 0)) | ((human == -1) & (d >= 0))
            V[:, base + 2] = 1.0 - discordant
            W[:, base + 2] = 1.0 / per_rec[rec]
    keys = [f"{c}|{s}" for c in names for s in stats_list]
    records = view.rows_record[ev]
    rows, samples, overall = _summarise(keys, V, W, units, records, unit_name, config, "all", "all", ev.size)
    for g in config.group_by:
        col = view.columns[g][ev]
        for level in sorted(set(col)):
            sel = col == level
            sub_rows, _, _ = _summarise(keys, V[sel], W[sel], units[sel], records[sel], unit_name, config, g, level,
                                        int(sel.sum()))
            rows += sub_rows
    return rows, samples, thresholds, overall


def _summarise(keys: list[str], V: np.ndarray, W: np.ndarray, units: np.ndarray, records: np.ndarray, unit_name: str,
               config: EvalConfig, group: str, level: str, n: int):
    est = weighted_mean(V, W) if V.shape[0] else np.full(len(keys), math.nan)
    n_units = int(np.unique(units.astype(str)).size)
    how = choose_resampling(units, unit_name, records, "record", config.level)
    samples = None
    if config.n_boot > 0 and how.available:
        plan = BootstrapPlan(how.labels, config.n_boot, config.seed)
        reps = plan.ratio_of_sums(V, W)
        samples = BootstrapSamples(keys, est, reps, config.level, how.n_units)
    rows = []
    for k, key in enumerate(keys):
        metric, stat = key.split("|")
        iv = samples.interval(key) if samples is not None else Interval(float(est[k]), math.nan, math.nan, config.level)
        n_used = int((W[:, k] > 0).sum())
        rows.append([group, level, metric, stat, iv.estimate, iv.low, iv.high, n_used if stat != INVERSION else n, n_units,
                     how.unit if samples is not None else "", how.n_units if samples is not None else 0])
    return rows, samples, how


def _rating_stats(x: np.ndarray, y: np.ndarray, mapped: np.ndarray) -> list[float]:
    return [srcc(x, y), krcc(x, y), plcc(x, y), srcc(mapped, y), krcc(mapped, y), plcc(mapped, y),
            rmse(mapped, y) if np.isfinite(mapped).all() else math.nan]


def _evaluate_ratings(view: _View, items: np.ndarray, names: list[str], valid: np.ndarray, config: EvalConfig,
                      notes: list[str], unit_name: str):
    ok = np.flatnonzero(valid)
    X, y, units, records = items[ok], view.mos[ok], view.units[ok], view.rows_record[ok]
    fits = {}
    mapped = np.full_like(X, math.nan)
    for m, c in enumerate(names):
        if config.logistic == "none":
            mapped[:, m] = X[:, m]
            continue
        fit = fit_logistic(X[:, m], y, config.logistic)
        fits[c] = {"kind": fit.kind, "params": list(fit.params), "ok": fit.ok, "message": fit.message}
        if not fit.ok:
            notes.append(f"{c}: the {config.logistic} logistic fit failed ({fit.message}); mapped statistics are NaN")
        mapped[:, m] = fit.predict(X[:, m])
    if config.logistic != "none":
        notes.append(f"mapped statistics use one {config.logistic} logistic per metric fitted on all rows (kept fixed "
                     f"in the bootstrap and in breakdowns)")

    def stat(rows: np.ndarray) -> np.ndarray:
        return np.asarray([v for m in range(len(names)) for v in _rating_stats(X[rows, m], y[rows], mapped[rows, m])])

    stats_list = list(RATING_STATS) if config.logistic != "none" else ["srcc", "krcc", "plcc"]
    keys_all = [f"{c}|{s}" for c in names for s in RATING_STATS]
    keep = [i for i, k in enumerate(keys_all) if k.split("|")[1] in stats_list]
    keys = [keys_all[i] for i in keep]

    def summarise(rows_sel: np.ndarray, group: str, level: str):
        est = stat(rows_sel)[keep]
        n_units = int(np.unique(units[rows_sel].astype(str)).size)
        how = choose_resampling(units[rows_sel], unit_name, records[rows_sel], "record", config.level)
        samples = None
        if config.n_boot > 0 and how.available:
            plan = BootstrapPlan(how.labels, config.n_boot, config.seed)
            reps = plan.apply(lambda r: stat(rows_sel[r]))[:, keep]
            samples = BootstrapSamples(keys, est, reps, config.level, how.n_units)
        out = []
        for k, key in enumerate(keys):
            metric, s = key.split("|")
            iv = samples.interval(key) if samples is not None else Interval(float(est[k]), math.nan, math.nan, config.level)
            out.append([group, level, metric, s, iv.estimate, iv.low, iv.high, int(rows_sel.size), n_units,
                        how.unit if samples is not None else "", how.n_units if samples is not None else 0])
        return out, samples, how

    all_rows = np.arange(ok.size)
    rows, samples, overall = summarise(all_rows, "all", "all")
    for g in config.group_by:
        col = view.columns[g][ok]
        for level in sorted(set(col)):
            sub, _, _ = summarise(np.flatnonzero(col == level), g, level)
            rows += sub
    return rows, samples, fits, overall
