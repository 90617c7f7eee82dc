"""Statistics for agreement with human judgements: rank/linear correlations, the IQA logistic
mapping, and a cluster (prompt-level) percentile bootstrap with paired differences.

Conventions (see docs/evaluation.md):

- SRCC, KRCC (tau-b) and PLCC equal ``scipy.stats.spearmanr``, ``kendalltau`` and ``pearsonr``;
  they are NaN (not an exception) when an input is constant or has fewer than 2 values.
- The logistic mappings are the ones pyiqa fits before PLCC: the 4-parameter VQEG function
  ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2`` with initial values ``[max(y), min(y), mean(x),
  std(x) / 4]`` and the 5-parameter DBCNN function ``b1 (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``
  with initial values ``[10, 0, mean(y), 0.1, 0.1]``; both fitted with ``scipy.optimize.curve_fit``.
- The bootstrap resamples *units* (prompts, when several rows share a prompt) with replacement,
  never rows inside a unit, and reports percentile intervals.
- Too few units: an interval or p-value needs at least :func:`min_units` independent units
  (6 at the 95% level): the fewest ``G`` with ``2^(1-G) <= 1 - level``, i.e. the fewest with which
  even an exact sign-flip test over the units could reach ``p < 1 - level``. With fewer prompts the
  records (pairs, rankings, ratings) are resampled instead and labelled as such
  (:func:`choose_resampling`); with fewer records too, intervals and p-values are not available (NaN).
  A p-value is never reported below ``2^(1-G)`` for the ``G`` units resampled (:func:`p_value_floor`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
from scipy import optimize, stats

# -- correlations --------------------------------------------------------------------------------


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlation of arrays of different lengths ({x.size} and {y.size})")
    return x, y


def _degenerate(x: np.ndarray, y: np.ndarray) -> bool:
    return x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0 or not (np.isfinite(x).all() and np.isfinite(y).all())


def plcc(x, y) -> float:
    """Pearson linear correlation in [-1, 1] (``scipy.stats.pearsonr``); NaN for constant input."""
    x, y = _pair(x, y)
    if _degenerate(x, y):
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    r = float(np.dot(xc, yc) / math.sqrt(np.dot(xc, xc) * np.dot(yc, yc)))
    return max(-1.0, min(1.0, r))


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.concatenate([[True], xs[1:] != xs[:-1]])
    group = np.cumsum(new_group) - 1
    counts = np.bincount(group)
    starts = np.cumsum(counts) - counts
    ranks = np.empty(x.size)
    ranks[order] = (starts + (counts + 1) / 2.0)[group]
    return ranks


def srcc(x, y) -> float:
    """Spearman rank correlation in [-1, 1]: Pearson of average ranks (``scipy.stats.spearmanr``)."""
    x, y = _pair(x, y)
    if _degenerate(x, y):
        return math.nan
    return plcc(average_ranks(x), average_ranks(y))


def krcc(x, y) -> float:
    """Kendall rank correlation tau-b in [-1, 1] (``scipy.stats.kendalltau``, which handles ties)."""
    x, y = _pair(x, y)
    if _degenerate(x, y):
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


# -- logistic mapping ----------------------------------------------------------------------------


def logistic4(x, b1, b2, b3, b4):
    """VQEG 4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / b4)) + b2``."""
    with np.errstate(over="ignore"):
        return (b1 - b2) / (1.0 + np.exp(-(np.asarray(x, dtype=np.float64) - b3) / b4)) + b2


def logistic5(x, b1, b2, b3, b4, b5):
    """DBCNN 5-parameter logistic: ``b1 (0.5 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


LOGISTICS = {"4pl": logistic4, "5pl": logistic5}


@dataclass(frozen=True)
class LogisticFit:
    """A fitted mapping from metric scores to the human scale (MOS units).

    ``ok`` is False when ``curve_fit`` did not converge; ``predict`` then returns NaN.
    """

    kind: str
    params: tuple[float, ...]
    ok: bool
    message: str = ""

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.ok:
            return np.full(x.shape, math.nan)
        return LOGISTICS[self.kind](x, *self.params)


def fit_logistic(x, y, kind: str = "4pl", maxfev: int = 20000) -> LogisticFit:
    """Fit ``y ~ f(x)`` with the 4- or 5-parameter logistic (initial values as in pyiqa)."""
    if kind not in LOGISTICS:
        raise ValueError(f"unknown logistic {kind!r}; use '4pl' or '5pl'")
    x, y = _pair(x, y)
    if _degenerate(x, y):
        return LogisticFit(kind, (), False, "constant input")
    if kind == "4pl":
        p0 = [float(np.max(y)), float(np.min(y)), float(np.mean(x)), float(np.std(x) / 4.0)]
    else:
        p0 = [10.0, 0.0, float(np.mean(y)), 0.1, 0.1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(LOGISTICS[kind], x, y, p0=p0, maxfev=maxfev)
    except (RuntimeError, ValueError, TypeError) as exc:  # TypeError: fewer points than parameters
        return LogisticFit(kind, tuple(p0), False, str(exc))
    if not np.isfinite(params).all():
        return LogisticFit(kind, tuple(float(p) for p in params), False, "non-finite parameters")
    return LogisticFit(kind, tuple(float(p) for p in params), True)


def rmse(x, y) -> float:
    x, y = _pair(x, y)
    return float(np.sqrt(np.mean((x - y) ** 2))) if x.size else math.nan


# -- bootstrap -----------------------------------------------------------------------------------


def min_units(level: float = 0.95) -> int:
    """Fewest independent units for a bootstrap interval or p-value at ``level`` (6 at 0.95, 8 at 0.99).

    The smallest ``G`` with ``2^(1-G) <= 1 - level``: with fewer units no test that treats the units as
    exchangeable (an exact sign-flip test is the most powerful such) can give a two-sided p-value below
    ``1 - level``, so a percentile interval at that level would only restate the few units seen.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    return max(2, math.ceil(1.0 + math.log2(1.0 / (1.0 - level)) - 1e-9))


def p_value_floor(n_units: int) -> float:
    """Smallest two-sided p-value ``G`` units can support: ``2^(1-G)`` (the exact sign-flip test's), capped at 1."""
    return 1.0 if n_units < 1 else min(1.0, 2.0 ** (1 - int(n_units)))


@dataclass(frozen=True)
class Resampling:
    """What a bootstrap resamples. ``unit``: the unit's name (``"prompt"``, ``"record"``, a column);
    ``labels``: one label per row, or None when there are too few units of any kind (no interval, no
    p-value); ``fallback``: True when records replace too few of the requested unit; ``reason``: why."""

    unit: str
    n_units: int
    labels: np.ndarray | None
    fallback: bool = False
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.labels is not None

    def describe(self) -> str:
        """``"prompts"``, ``"records (fallback: only 1 prompt, fewer than 6)"`` or ``"n/a (only 2 records, fewer than 6)"``."""
        if not self.available:
            return f"n/a ({self.reason})"
        name = f"{self.unit}s"
        return f"{name} (fallback: {self.reason})" if self.fallback else name


def _count(n: int, unit: str) -> str:
    return f"only {n} {unit}{'' if n == 1 else 's'}"


def choose_resampling(units, unit: str, records=None, record_unit: str = "record", level: float = 0.95) -> Resampling:
    """Pick the bootstrap unit: ``units`` (one label per row) when there are at least :func:`min_units`
    distinct ones, else ``records`` (one label per row: the judgement record of the row; treated as
    independent, which they are not when they share a prompt, hence the label), else nothing."""
    need = min_units(level)
    labels = np.asarray(units, dtype=object).astype(str)
    n = int(np.unique(labels).size)
    if n >= need:
        return Resampling(unit, n, labels)
    short = f"{_count(n, unit)}, fewer than {need}"
    if records is not None and record_unit != unit:
        rec = np.asarray(records, dtype=object).astype(str)
        n_rec = int(np.unique(rec).size)
        if n_rec >= need:
            return Resampling(record_unit, n_rec, rec, True, short)
        short += f"; {_count(n_rec, record_unit)}"
    return Resampling(unit, n, None, False, short)


class BootstrapPlan:
    """Resampling of independent units with replacement, reproducible from ``seed``.

    ``units``: one label per row (e.g. the prompt); rows sharing a label are drawn together. Each
    replicate draws as many units as there are, so a replicate has about as many rows as the data.
    The same plan gives the same replicates to every statistic, which makes paired comparisons
    between metrics exact (each difference is computed on the same resampled units).
    """

    def __init__(self, units, n_boot: int = 1000, seed: int = 0, chunk: int = 128):
        if n_boot < 1:
            raise ValueError("n_boot must be at least 1")
        labels = np.asarray(units, dtype=object)
        _, codes = np.unique(labels.astype(str), return_inverse=True)
        self.codes = codes.astype(np.int64).ravel()
        self.n_units = int(self.codes.max()) + 1 if self.codes.size else 0
        self.n_rows = int(self.codes.size)
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.chunk = int(chunk)
        order = np.argsort(self.codes, kind="stable")
        self._rows_sorted = order
        counts = np.bincount(self.codes, minlength=self.n_units)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self._counts = counts

    def draws(self) -> Iterator[np.ndarray]:
        """Chunks of unit draws, arrays of shape ``(b, n_units)``; the same sequence every time."""
        rng = np.random.default_rng(self.seed)
        done = 0
        while done < self.n_boot:
            b = min(self.chunk, self.n_boot - done)
            yield rng.integers(0, self.n_units, size=(b, self.n_units))
            done += b

    def rows(self, draw: np.ndarray) -> np.ndarray:
        """Row indices of one replicate (every row of every drawn unit, repeated as drawn)."""
        counts = self._counts[draw]
        starts = self._starts[draw]
        total = int(counts.sum())
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return self._rows_sorted[np.arange(total) + offsets]

    def ratio_of_sums(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Bootstrap replicates of weighted means ``sum(w v) / sum(w)`` over rows.

        ``values``/``weights``: ``(n_rows, S)`` (NaN values must have weight 0). Returns ``(n_boot, S)``.
        Exactly the weighted mean of each resampled data set, computed from unit totals.
        """
        values = np.asarray(values, dtype=np.float64).reshape(self.n_rows, -1)
        weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).reshape(values.shape)
        wv = np.where(weights > 0, values * weights, 0.0)
        sums = np.zeros((self.n_units, values.shape[1]))
        tots = np.zeros((self.n_units, values.shape[1]))
        np.add.at(sums, self.codes, wv)
        np.add.at(tots, self.codes, weights)
        out = []
        for draw in self.draws():
            b = draw.shape[0]
            counts = np.bincount((draw + np.arange(b)[:, None] * self.n_units).ravel(),
                                 minlength=b * self.n_units).reshape(b, self.n_units).astype(np.float64)
            num, den = counts @ sums, counts @ tots
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
        return np.concatenate(out, axis=0)

    def apply(self, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Bootstrap replicates of any statistic of the rows: ``stat(row_indices) -> (S,)``."""
        out = []
        for draw in self.draws():
            for d in draw:
                out.append(np.atleast_1d(np.asarray(stat(self.rows(d)), dtype=np.float64)))
        return np.vstack(out)


def weighted_mean(values, weights=None) -> np.ndarray:
    """Column-wise ``sum(w v) / sum(w)`` (NaN where the weights sum to 0)."""
    values = np.asarray(values, dtype=np.float64)
    values = values.reshape(values.shape[0], -1)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).reshape(values.shape)
    num = np.where(weights > 0, values * weights, 0.0).sum(axis=0)
    den = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (same units as the statistic)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def percentile_interval(estimate: float, samples: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile interval of bootstrap ``samples`` (NaN replicates ignored; NaN if none left)."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0 or not math.isfinite(estimate):
        return Interval(float(estimate), math.nan, math.nan, level)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Interval(float(estimate), float(low), float(high), level)


@dataclass(frozen=True)
class PairedTest:
    """Difference ``a - b`` of one statistic between two metrics on the same resampled units.

    ``p_value``: two-sided bootstrap p-value of "no difference",
    ``min(1, 2 min((#{d <= 0} + 1), (#{d >= 0} + 1)) / (B + 1))``, never below
    :func:`p_value_floor` of the number of units resampled (NaN without replicates).
    """

    difference: Interval
    p_value: float
    n_boot: int

    @property
    def significant(self) -> bool:
        return not (self.difference.low <= 0.0 <= self.difference.high)


def paired_test(estimate_a: float, estimate_b: float, samples_a, samples_b, level: float = 0.95,
                n_units: int | None = None) -> PairedTest:
    """Paired bootstrap test from replicates drawn with the same :class:`BootstrapPlan` of ``n_units``
    units (when given, the p-value is at least ``2^(1 - n_units)``)."""
    a, b = np.asarray(samples_a, dtype=np.float64), np.asarray(samples_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError("paired samples must come from the same bootstrap plan (same shape)")
    d = a - b
    d = d[np.isfinite(d)]
    interval = percentile_interval(estimate_a - estimate_b, d, level)
    if d.size == 0:
        return PairedTest(interval, math.nan, 0)
    le = (np.count_nonzero(d <= 0) + 1) / (d.size + 1)
    ge = (np.count_nonzero(d >= 0) + 1) / (d.size + 1)
    p = min(1.0, 2.0 * min(le, ge))
    if n_units is not None:
        p = max(p, p_value_floor(n_units))
    return PairedTest(interval, float(p), int(d.size))


@dataclass
class BootstrapSamples:
    """Estimates and replicates of several named statistics from one plan (for paired tests)."""

    names: list[str]
    estimates: np.ndarray
    samples: np.ndarray  # (n_boot, len(names))
    level: float = 0.95
    n_units: int = 0  # units resampled (the p-value floor's G); 0: unknown
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {n: i for i, n in enumerate(self.names)}

    def interval(self, name: str) -> Interval:
        i = self.index[name]
        return percentile_interval(float(self.estimates[i]), self.samples[:, i], self.level)

    def test(self, a: str, b: str) -> PairedTest:
        i, j = self.index[a], self.index[b]
        return paired_test(float(self.estimates[i]), float(self.estimates[j]), self.samples[:, i], self.samples[:, j],
                           self.level, self.n_units or None)
