"""Reward-hacking and bias warnings computed from score tables.

* :func:`reward_hacking` - a target metric improves between two image sets (e.g. before/after
  optimising a generator against it) while held-out metrics, or the target's agreement with humans,
  fall. Changes are in standard deviations of the "before" set, with bootstrap intervals.
* :func:`pinned_scores` - many scores at a limit of the metric's declared range (or stuck on one
  extreme value): the metric saturates and stops telling images apart.
* :func:`disagreements` - images ranked most differently by the metrics (percentile spread).
* :func:`alignment_vs_aesthetic` - images whose prompt-alignment score is low while their aesthetic
  score is high ("pretty but wrong").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from .scores import ScoreTable, output_range
from .stats import percentile_interval

ALIGNMENT_FAMILIES = ("clipscore",)
AESTHETIC_FAMILIES = ("aesthetic", "clip-iqa", "q-align")


@dataclass
class Finding:
    """One warning. ``severity``: ``"warning"`` (act on it) or ``"info"``; ``details``: the numbers."""

    kind: str
    severity: str
    message: str
    metric: str | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "metric": self.metric, "message": self.message,
                "details": self.details}


def _oriented(table: ScoreTable, column: str) -> np.ndarray:
    v = table.values[column]
    return v if table.higher_is_better.get(column, True) else -v


def percentile_ranks(values) -> np.ndarray:
    """Mid-rank percentile of each value within the set, in (0, 1); NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, math.nan)
    ok = np.isfinite(v)
    if ok.any():
        out[ok] = (sps.rankdata(v[ok]) - 0.5) / ok.sum()
    return out


# -- before / after ---------------------------------------------------------------------------------


def compare_sets(before: ScoreTable, after: ScoreTable, columns: Sequence[str] | None = None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95):
    """Change of each metric's mean from ``before`` to ``after`` (oriented: positive = better).

    ``change_sd`` is the change in standard deviations of the before set. When both sets have
    prompts in common, the change is paired by prompt (mean over shared prompts of the per-prompt
    mean difference, prompts resampled); otherwise the two sets are resampled independently.
    Returns a DataFrame: metric, before, after, change, change_sd, low_sd, high_sd, paired, n_before, n_after.
    """
    import pandas as pd

    cols = list(columns) if columns else [c for c in before.columns if c in after.values]
    rng = np.random.default_rng(seed)
    rows = []
    shared = []
    if before.prompts is not None and after.prompts is not None:
        shared = sorted(set(before.prompts) & set(after.prompts))
    for c in cols:
        if c not in before.values or c not in after.values:
            raise KeyError(f"metric column {c!r} must be in both score tables")
        b, a = _oriented(before, c), _oriented(after, c)
        b_ok, a_ok = b[np.isfinite(b)], a[np.isfinite(a)]
        sd = float(b_ok.std()) if b_ok.size > 1 else math.nan
        if not sd or not math.isfinite(sd):
            sd = float(np.concatenate([b_ok, a_ok]).std()) or 1.0
        sign = 1.0 if before.higher_is_better.get(c, True) else -1.0
        if len(shared) >= 2:
            bp, ap = np.asarray(before.prompts, dtype=object), np.asarray(after.prompts, dtype=object)
            diffs = np.asarray([np.nanmean(a[ap == p]) - np.nanmean(b[bp == p]) for p in shared])
            diffs = diffs[np.isfinite(diffs)]
            change = float(diffs.mean())
            idx = rng.integers(0, diffs.size, size=(n_boot, diffs.size))
            reps = diffs[idx].mean(axis=1)
            paired = True
        else:
            change = float(a_ok.mean() - b_ok.mean())
            reps = (a_ok[rng.integers(0, a_ok.size, size=(n_boot, a_ok.size))].mean(axis=1)
                    - b_ok[rng.integers(0, b_ok.size, size=(n_boot, b_ok.size))].mean(axis=1))
            paired = False
        iv = percentile_interval(change / sd, reps / sd, level)
        rows.append({"metric": c, "before": sign * float(b_ok.mean()), "after": sign * float(a_ok.mean()),
                     "change": change, "change_sd": iv.estimate, "low_sd": iv.low, "high_sd": iv.high,
                     "paired": paired, "n_before": int(b_ok.size), "n_after": int(a_ok.size)})
    return pd.DataFrame(rows)


def reward_hacking(before: ScoreTable, after: ScoreTable, target: str, held_out: Sequence[str] | None = None,
                   agreement_before=None, agreement_after=None, statistic: str | None = None,
                   tolerance_sd: float = 0.0, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[list[Finding], object]:
    """Warn when ``target`` improves from ``before`` to ``after`` while other signals fall.

    ``held_out``: metric columns not optimised (default: every other column in both tables). A
    warning is raised for each held-out metric whose change interval lies wholly below
    ``-tolerance_sd`` while the target's lies wholly above 0. ``agreement_before``/``agreement_after``:
    :class:`EvaluationResult` of the target on human judgements of each set; a drop of
    ``statistic`` (default: ``accuracy`` for pairs, ``srcc`` for ratings) whose interval excludes 0
    is a warning too. Returns ``(findings, change table)``.
    """
    cols = [target] + [c for c in (held_out if held_out is not None else before.columns)
                       if c != target and c in after.values]
    table = compare_sets(before, after, cols, n_boot, seed, level)
    findings: list[Finding] = []
    t = table[table.metric == target].iloc[0]
    improved = t.low_sd > 0
    if improved:
        for _, r in table[table.metric != target].iterrows():
            if r.high_sd < -tolerance_sd:
                findings.append(Finding(
                    "reward_hacking", "warning",
                    f"{target} rose by {t.change_sd:+.2f} SD [{t.low_sd:+.2f}, {t.high_sd:+.2f}] while held-out "
                    f"{r.metric} fell by {r.change_sd:+.2f} SD [{r.low_sd:+.2f}, {r.high_sd:+.2f}]: the gain may be "
                    f"reward hacking rather than better images", r.metric,
                    {"target": target, "target_change_sd": t.change_sd, "change_sd": r.change_sd,
                     "low_sd": r.low_sd, "high_sd": r.high_sd}))
            elif r.low_sd <= 0 <= r.high_sd and t.change_sd > 1.0:
                findings.append(Finding(
                    "held_out_flat", "info",
                    f"{target} rose by {t.change_sd:+.2f} SD but held-out {r.metric} did not change detectably "
                    f"({r.change_sd:+.2f} SD [{r.low_sd:+.2f}, {r.high_sd:+.2f}])", r.metric,
                    {"target": target, "change_sd": r.change_sd}))
    if agreement_before is not None and agreement_after is not None:
        f = _agreement_drop(target, agreement_before, agreement_after, statistic, level)
        if f is not None and (improved or f.severity == "warning"):
            findings.append(f)
    return findings, table


def _agreement_drop(target: str, before, after, statistic: str | None, level: float) -> Finding | None:
    stat = statistic or ("srcc" if before.kind == "ratings" else "accuracy")
    key = f"{target}|{stat}"
    if before.samples is None or after.samples is None or key not in before.samples.index or key not in after.samples.index:
        raise KeyError(f"both agreement results need bootstrap samples of {stat!r} for metric {target!r}")
    eb, ea = before.samples.estimates[before.samples.index[key]], after.samples.estimates[after.samples.index[key]]
    sb, sa = before.samples.samples[:, before.samples.index[key]], after.samples.samples[:, after.samples.index[key]]
    n = min(sb.size, sa.size)
    iv = percentile_interval(float(ea - eb), sa[:n] - sb[:n], level)  # independent data sets: replicate differences
    if iv.high < 0:
        return Finding("human_agreement_drop", "warning",
                       f"{target}'s agreement with humans ({stat}) fell from {eb:.3f} to {ea:.3f} "
                       f"(change {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]): the images moved where the "
                       f"metric no longer reflects human judgement", target,
                       {"statistic": stat, "before": float(eb), "after": float(ea), "low": iv.low, "high": iv.high})
    return None


# -- single set ------------------------------------------------------------------------------------


def pinned_scores(scores: ScoreTable, ranges: Mapping[str, tuple[float, float]] | None = None, fraction: float = 0.05,
                  rel_tol: float = 1e-6) -> list[Finding]:
    """Metrics with at least ``fraction`` of their scores at a limit of the declared range (within
    ``rel_tol`` of the range width, or of the value's magnitude for a one-sided range), or stuck on one
    repeated extreme value (any range)."""
    findings = []
    for c in scores.columns:
        v = scores.values[c]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        lo, hi = (ranges or {}).get(c, output_range(c))
        width = hi - lo if math.isfinite(lo) and math.isfinite(hi) else max(1.0, float(np.abs(v).max()))
        tol = rel_tol * width
        for bound, name in ((lo, "lower"), (hi, "upper")):
            if not math.isfinite(bound):
                continue
            share = float(np.mean(np.abs(v - bound) <= tol))
            if share >= fraction:
                findings.append(Finding(
                    "pinned", "warning",
                    f"{share:.0%} of {c} scores sit at its {name} limit {bound:g}: the metric saturates there and cannot "
                    f"rank those images", c, {"bound": bound, "side": name, "fraction": share, "n": int(v.size)}))
        for value, name in ((v.max(), "maximum"), (v.min(), "minimum")):
            same = int(np.sum(v == value))
            if same >= max(3, fraction * v.size) and same < v.size and not any(
                    f.metric == c and f.details.get("bound") == value for f in findings):
                findings.append(Finding(
                    "plateau", "warning",
                    f"{same} of {v.size} {c} scores equal its observed {name} {value:g} exactly: the metric may be "
                    f"clipped or saturated", c, {"value": float(value), "count": same, "n": int(v.size)}))
        if np.ptp(v) == 0 and v.size > 1:
            findings.append(Finding("constant", "warning", f"every {c} score equals {v[0]:g}", c, {"value": float(v[0])}))
    return findings


def disagreements(scores: ScoreTable, columns: Sequence[str] | None = None, top: int | None = 20):
    """Images ranked most differently by the metrics.

    Each metric's oriented scores become percentile ranks within the set (0 = worst, 1 = best);
    ``spread`` is the largest minus the smallest percentile of an image across metrics. Returns a
    DataFrame sorted by spread (largest first): image, prompt, spread, best_by, worst_by and one
    percentile column per metric.
    """
    import pandas as pd

    cols = list(columns) if columns else scores.columns
    if len(cols) < 2:
        raise ValueError("disagreement needs at least two metrics")
    P = np.column_stack([percentile_ranks(_oriented(scores, c)) for c in cols])
    ok = np.isfinite(P).all(axis=1)
    filled = np.where(ok[:, None], P, 0.0)
    frame = pd.DataFrame({"image": scores.images})
    if scores.prompts is not None:
        frame["prompt"] = scores.prompts
    frame["spread"] = filled.max(axis=1) - filled.min(axis=1)
    frame["best_by"] = [cols[i] for i in filled.argmax(axis=1)]
    frame["worst_by"] = [cols[i] for i in filled.argmin(axis=1)]
    for k, c in enumerate(cols):
        frame[f"{c}:percentile"] = P[:, k]
    frame = frame[ok].sort_values("spread", ascending=False, kind="stable").reset_index(drop=True)
    return frame.head(top) if top else frame


def _family_columns(columns: Sequence[str], families: Sequence[str]) -> list[str]:
    from ..registry import column_metric, get_spec

    out = []
    for c in columns:
        found = column_metric(c)
        if found is not None and get_spec(found[0]).family in families:
            out.append(c)
    return out


def alignment_vs_aesthetic(scores: ScoreTable, alignment: Sequence[str] | None = None, aesthetic: Sequence[str] | None = None,
                           low: float = 0.25, high: float = 0.75, warn_fraction: float = 0.05):
    """Images in the bottom ``low`` of prompt alignment and the top ``1 - high`` of aesthetics.

    ``alignment``/``aesthetic``: metric columns (default: registry families clipscore, and
    aesthetic/clip-iqa/q-align). Percentiles are within the set; with several columns per side their
    mean is used. Returns ``(findings, flagged DataFrame)``; a warning when at least ``warn_fraction``
    of the images are flagged (independent metrics would flag about ``low * (1 - high)``).
    """
    import pandas as pd

    alignment = list(alignment) if alignment is not None else _family_columns(scores.columns, ALIGNMENT_FAMILIES)
    aesthetic = list(aesthetic) if aesthetic is not None else _family_columns(scores.columns, AESTHETIC_FAMILIES)
    if not alignment or not aesthetic:
        return [], pd.DataFrame(columns=["image", "alignment_percentile", "aesthetic_percentile"])
    al = np.mean([percentile_ranks(_oriented(scores, c)) for c in alignment], axis=0)
    ae = np.mean([percentile_ranks(_oriented(scores, c)) for c in aesthetic], axis=0)
    flag = (al <= low) & (ae >= high)
    frame = pd.DataFrame({"image": scores.images})
    if scores.prompts is not None:
        frame["prompt"] = scores.prompts
    frame["alignment_percentile"] = al
    frame["aesthetic_percentile"] = ae
    flagged = frame[flag].assign(gap=ae[flag] - al[flag]).sort_values("gap", ascending=False).reset_index(drop=True)
    findings = []
    share = float(flag.mean()) if flag.size else 0.0
    if flag.any():
        sev = "warning" if share >= warn_fraction else "info"
        findings.append(Finding(
            "alignment_vs_aesthetic", sev,
            f"{int(flag.sum())} image(s) ({share:.0%}) score high on aesthetics ({', '.join(aesthetic)}) but low on "
            f"prompt alignment ({', '.join(alignment)}): pretty images of the wrong thing", None,
            {"count": int(flag.sum()), "fraction": share, "alignment": alignment, "aesthetic": aesthetic}))
    return findings, flagged


@dataclass
class Checks:
    """All single-set checks on one score table (and the before/after check when a baseline is given)."""

    findings: list[Finding]
    disagreement: object  # DataFrame
    flagged: object  # DataFrame
    changes: object | None = None  # DataFrame from compare_sets


def run_checks(scores: ScoreTable, baseline: ScoreTable | None = None, target: str | None = None,
               held_out: Sequence[str] | None = None, top: int = 20, n_boot: int = 1000, seed: int = 0) -> Checks:
    """Pinned scores, disagreement list, alignment-vs-aesthetic, and (with ``baseline`` and ``target``)
    the reward-hacking comparison ``baseline -> scores``."""
    findings = pinned_scores(scores)
    dis = disagreements(scores, top=top) if len(scores.columns) >= 2 else None
    f2, flagged = alignment_vs_aesthetic(scores)
    findings += f2
    changes = None
    if baseline is not None:
        if target is None:
            raise ValueError("a baseline needs the target metric (the one that was optimised)")
        f3, changes = reward_hacking(baseline, scores, target, held_out, n_boot=n_boot, seed=seed)
        findings = f3 + findings
    return Checks(findings, dis, flagged, changes)
