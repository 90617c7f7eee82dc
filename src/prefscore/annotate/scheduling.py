"""Which pair to show next: balanced coverage first, then informative pairs.

Phase 1 (coverage): while some pair the annotator has not judged has fewer than ``min_votes``
answers (counting pairs other annotators are looking at right now), pick among the least-covered
pairs, preferring pairs whose images have been compared least, at random among equals.

Phase 2 (active): score every remaining pair by how informative it is, divided by ``1 + votes``:

* metric disagreement: ``1 - |mean_k sign_k|`` over the precomputed metrics (``sign_k`` = which image
  metric ``k`` prefers), 1 when the metrics split evenly, 0 when they agree (needs >= 2 metrics);
* Bradley-Terry uncertainty: how likely the current order of the two images' generators is wrong
  (:func:`stats.order_uncertainty`, in [0, 1]; 0 for two images of one generator).

A pair is never shown twice to the same annotator, except as a deliberate repeat-consistency check
(``repeat_rate`` > 0): then, with that probability, a pair the annotator answered at least
``repeat_gap`` answers ago is shown again with the sides swapped, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .stats import BTFit, order_uncertainty


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduling knobs.

    ``min_votes``: answers per pair wanted before active choice starts (>= 0).
    ``repeat_rate``: probability in [0, 1) that the next pair is a repeat-consistency check.
    ``repeat_gap``: answers that must separate a pair from its repeat (>= 1).
    ``metric_weight`` / ``bt_weight``: weights (>= 0) of metric disagreement and BT uncertainty.
    ``pending_ttl_s``: seconds a pair shown to someone and not yet answered counts as covered.
    ``seed``: makes the choices reproducible (per annotator and answer count).
    """

    min_votes: int = 1
    repeat_rate: float = 0.0
    repeat_gap: int = 5
    metric_weight: float = 1.0
    bt_weight: float = 1.0
    pending_ttl_s: float = 600.0
    seed: int = 0

    def __post_init__(self):
        if self.min_votes < 0:
            raise ValueError(f"min_votes must be >= 0, got {self.min_votes}")
        if not 0.0 <= self.repeat_rate < 1.0:
            raise ValueError(f"repeat_rate must be in [0, 1), got {self.repeat_rate}")
        if self.repeat_gap < 1:
            raise ValueError(f"repeat_gap must be >= 1, got {self.repeat_gap}")
        if self.metric_weight < 0 or self.bt_weight < 0:
            raise ValueError("metric_weight and bt_weight must be >= 0")
        if self.pending_ttl_s < 0:
            raise ValueError(f"pending_ttl_s must be >= 0, got {self.pending_ttl_s}")


def metric_disagreement(metrics_a: Mapping[str, float], metrics_b: Mapping[str, float], higher_is_better: Mapping[str, bool]) -> float:
    """``1 - |mean sign|`` of the metrics' preferences between two images, in [0, 1]; 0 with fewer
    than two metrics scoring both images (a metric that scores them equal counts as sign 0)."""
    signs = []
    for name, up in higher_is_better.items():
        if name in metrics_a and name in metrics_b:
            d = metrics_a[name] - metrics_b[name]
            signs.append((1 if d > 0 else -1 if d < 0 else 0) * (1 if up else -1))
    if len(signs) < 2:
        return 0.0
    return 1.0 - abs(sum(signs)) / len(signs)


@dataclass(frozen=True)
class Candidates:
    """The pairs an annotator may be shown, as aligned arrays.

    ``votes``: answers so far (+ pending views by others); ``item_votes``: summed answers of the two
    images; ``disagreement``: metric disagreement in [0, 1]; ``gen_a`` / ``gen_b``: generator index of
    each side in the BT fit (-1 when unknown).
    """

    pair_ids: np.ndarray
    votes: np.ndarray
    item_votes: np.ndarray
    disagreement: np.ndarray
    gen_a: np.ndarray
    gen_b: np.ndarray


def choose(c: Candidates, config: SchedulerConfig, rng: np.random.Generator, fit: BTFit | None) -> tuple[int, str]:
    """Index into ``c`` of the pair to show and the reason (``"coverage"`` or ``"active"``)."""
    if len(c.pair_ids) == 0:
        raise ValueError("no candidate pairs")
    jitter = rng.random(len(c.pair_ids))
    low = c.votes.min()
    if low < config.min_votes:
        idx = np.flatnonzero(c.votes == low)
        order = np.lexsort((jitter[idx], c.item_votes[idx]))
        return int(idx[order[0]]), "coverage"
    info = config.metric_weight * c.disagreement
    if fit is not None and config.bt_weight > 0:
        known = (c.gen_a >= 0) & (c.gen_b >= 0)
        doubt = np.zeros(len(c.pair_ids))
        if known.any():
            doubt[known] = order_uncertainty(fit, c.gen_a[known], c.gen_b[known])
        info = info + config.bt_weight * doubt
    score = info / (1.0 + c.votes) + 1e-9 * jitter
    return int(np.argmax(score)), "active"


def rng_for(seed: int, annotator_id: int, n_assignments: int) -> np.random.Generator:
    """A generator that depends only on the seed, the annotator and how many pairs they were shown,
    so a restarted server makes the same choices."""
    return np.random.default_rng([seed, annotator_id, n_assignments])


def wants_repeat(config: SchedulerConfig, rng: np.random.Generator) -> bool:
    return config.repeat_rate > 0 and rng.random() < config.repeat_rate


def pick_repeat(eligible: Sequence[int], rng: np.random.Generator) -> int | None:
    """One of the pairs eligible for a repeat check, or ``None``."""
    if not eligible:
        return None
    return int(eligible[int(rng.integers(len(eligible)))])

