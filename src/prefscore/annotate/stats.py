"""Statistics over pairwise judgements: Bradley-Terry strengths with confidence intervals, metric
agreement with the humans, and agreement between annotators (raw and Krippendorff's alpha)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class BTFit:
    """Bradley-Terry fit. ``strength`` is in natural log-odds units, centred to mean 0 over the
    generators: ``P(i beats j) = sigmoid(strength[i] - strength[j])``. ``cov`` is the covariance of
    the centred strengths (from the curvature of the penalised likelihood)."""

    names: list[str]
    strength: np.ndarray
    cov: np.ndarray

    @property
    def stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))

    def interval(self, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
        """Wald interval ``strength -/+ z * stderr`` (95% by default)."""
        return self.strength - z * self.stderr, self.strength + z * self.stderr


def fit_bradley_terry(
    n: int, first: np.ndarray, second: np.ndarray, outcome: np.ndarray, prior_variance: float = 10.0,
    names: Sequence[str] | None = None, max_iter: int = 100,
) -> BTFit:
    """Maximum a-posteriori Bradley-Terry strengths for ``n`` players.

    Each comparison ``k`` is between ``first[k]`` and ``second[k]`` with ``outcome[k]`` = 1 (first
    won), 0 (second won) or 0.5 (tie, counted as half a win each). A Gaussian prior N(0,
    ``prior_variance``) on each strength keeps the estimate finite when a player won or lost
    everything; Newton's method on the (concave) log-posterior converges in a few steps.
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    y = np.asarray(outcome, dtype=np.float64)
    lam = 1.0 / prior_variance
    s = np.zeros(n)
    hess = -lam * np.eye(n)

    def objective(s: np.ndarray) -> float:
        d = s[first] - s[second]
        return float(np.sum(y * -np.logaddexp(0.0, -d) + (1 - y) * -np.logaddexp(0.0, d)) - 0.5 * lam * s @ s)

    value = objective(s)
    for _ in range(max_iter):
        d = s[first] - s[second]
        p = 1.0 / (1.0 + np.exp(-d))
        r = y - p
        grad = np.bincount(first, r, n) - np.bincount(second, r, n) - lam * s
        w = p * (1 - p)
        hess = -lam * np.eye(n)
        np.add.at(hess, (first, first), -w)
        np.add.at(hess, (second, second), -w)
        np.add.at(hess, (first, second), w)
        np.add.at(hess, (second, first), w)
        step = np.linalg.solve(hess, -grad)
        t = 1.0
        while True:  # damped Newton: never decrease the log-posterior
            new = s + t * step
            new_value = objective(new)
            if new_value >= value - 1e-12 or t < 1e-6:
                break
            t /= 2
        s, value = new, new_value
        if np.max(np.abs(t * step)) < 1e-10:
            break
    cov = np.linalg.inv(-hess)
    centre = np.eye(n) - 1.0 / n if n else np.eye(0)
    return BTFit(list(names) if names is not None else [str(i) for i in range(n)], centre @ s, centre @ cov @ centre.T)


def order_uncertainty(fit: BTFit, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Probability, under the Gaussian (Laplace) approximation of the posterior, that the current
    order of players ``a`` and ``b`` is wrong, doubled to lie in [0, 1]: ``2 * Phi(-|d| / sd(d))``
    with ``d = strength[a] - strength[b]``. 1 for an undecided pair, near 0 for a settled one, 0 where
    ``a == b``."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    diff = fit.strength[a] - fit.strength[b]
    sd = np.sqrt(np.clip(fit.cov[a, a] + fit.cov[b, b] - 2 * fit.cov[a, b], 1e-300, None))
    doubt = np.array([math.erfc(z / math.sqrt(2.0)) for z in np.abs(diff) / sd])  # 2 * Phi(-z)
    return np.where(a == b, 0.0, doubt)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); ``(nan, nan)`` when ``n == 0``."""
    if n == 0:
        return math.nan, math.nan
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def krippendorff_alpha_nominal(units: Sequence[Sequence[str]]) -> float | None:
    """Krippendorff's alpha for nominal labels; ``units`` holds the labels given to each item (units
    with fewer than two labels are ignored). 1 = perfect agreement, 0 = chance level; ``None`` when
    undefined (fewer than two pairable labels, or a single category everywhere)."""
    coincidence: dict[tuple[str, str], float] = defaultdict(float)
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        counts = Counter(labels)
        for c, nc in counts.items():
            for k, nk in counts.items():
                coincidence[c, k] += (nc * (nk - (c == k))) / (m - 1)
    n_c: dict[str, float] = defaultdict(float)
    for (c, _k), v in coincidence.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n < 2:
        return None
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def pairwise_agreement(units: Sequence[Sequence[tuple[str, str]]]) -> tuple[float | None, int, dict[tuple[str, str], list[int]]]:
    """Raw agreement between annotators who judged the same item.

    ``units``: per item, the ``(annotator, label)`` judgements. Returns the fraction of agreeing
    annotator pairs over all items (``None`` if there are none), the number of such pairs, and per
    ``(annotator1, annotator2)`` (sorted) the counts ``[agreeing, total]``.
    """
    per_pair: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    agree = total = 0
    for judged in units:
        for (u1, l1), (u2, l2) in combinations(sorted(judged), 2):
            if u1 == u2:
                continue
            same = int(l1 == l2)
            agree += same
            total += 1
            cell = per_pair[u1, u2]
            cell[0] += same
            cell[1] += 1
    return (agree / total if total else None), total, dict(per_pair)

