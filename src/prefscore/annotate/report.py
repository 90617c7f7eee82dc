"""The leaderboard: Bradley-Terry strengths per generator, each metric's agreement with the humans,
and agreement between (and within) annotators, computed from the answers collected so far.

Only first answers count (repeat-consistency answers only feed the self-consistency column);
skips are left out; a tie is half a win for each side in the Bradley-Terry fit.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict

import numpy as np

from .db import Store
from ..evaluation.stats import srcc
from .stats import Z95, fit_bradley_terry, krippendorff_alpha_nominal, pairwise_agreement, wilson_interval

PRIOR_VARIANCE = 10.0


def _num(x: float | None) -> float | None:
    """JSON-safe float (``None`` for NaN / missing), rounded for display."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), 6)


def leaderboard(store: Store) -> dict:
    """Everything the leaderboard page and ``prefscore annotate report`` show, as plain JSON data."""
    rows = store.judgement_rows()
    counts = store.counts()
    first = [r for r in rows if not r["is_repeat"]]
    answered = [r for r in first if r["label"] != "skip"]

    # -- Bradley-Terry per generator ---------------------------------------------------------------
    generators = store.generators()
    gindex = {g: k for k, g in enumerate(generators)}
    tally = {g: {"wins": 0, "losses": 0, "ties": 0} for g in generators}
    fa, fb, fy = [], [], []
    for r in answered:
        ga, gb = r["generator_a"], r["generator_b"]
        if ga is None or gb is None or ga == gb:
            continue
        fa.append(gindex[ga])
        fb.append(gindex[gb])
        fy.append({"a": 1.0, "b": 0.0, "tie": 0.5}[r["label"]])
        if r["label"] == "tie":
            tally[ga]["ties"] += 1
            tally[gb]["ties"] += 1
        else:
            win, lose = (ga, gb) if r["label"] == "a" else (gb, ga)
            tally[win]["wins"] += 1
            tally[lose]["losses"] += 1
    gen_rows = []
    strength_of: dict[str, float] = {}
    if generators:
        fit = fit_bradley_terry(len(generators), np.array(fa), np.array(fb), np.array(fy), PRIOR_VARIANCE, generators)
        lo, hi = fit.interval(Z95)
        for k, g in enumerate(generators):
            t = tally[g]
            n = t["wins"] + t["losses"] + t["ties"]
            strength_of[g] = float(fit.strength[k])
            gen_rows.append({"generator": g, "strength": _num(fit.strength[k]), "ci_low": _num(lo[k]), "ci_high": _num(hi[k]),
                             "stderr": _num(fit.stderr[k]), "comparisons": n, **t,
                             "win_rate": _num((t["wins"] + 0.5 * t["ties"]) / n) if n else None})
        gen_rows.sort(key=lambda r: -r["strength"])
        for rank, r in enumerate(gen_rows, 1):
            r["rank"] = rank

    # -- metrics vs humans -------------------------------------------------------------------------
    means = _generator_metric_means(store)
    metric_rows = []
    for m in store.metric_columns():
        sign = 1.0 if m.higher_is_better else -1.0
        agree = n = equal = 0
        for r in answered:
            if r["label"] == "tie" or m.name not in r["metrics_a"] or m.name not in r["metrics_b"]:
                continue
            d = sign * (r["metrics_a"][m.name] - r["metrics_b"][m.name])
            if d == 0:
                equal += 1
                continue
            n += 1
            agree += int((d > 0) == (r["label"] == "a"))
        lo_, hi_ = wilson_interval(agree, n)
        gens = [g for g in generators if g in means.get(m.name, {})]
        rho = srcc([sign * means[m.name][g] for g in gens], [strength_of[g] for g in gens]) if strength_of and len(gens) >= 3 else None
        metric_rows.append({"metric": m.name, "higher_is_better": m.higher_is_better, "agreement": _num(agree / n) if n else None,
                            "ci_low": _num(lo_), "ci_high": _num(hi_), "pairs": n, "equal_scores": equal,
                            "generator_rank_spearman": _num(rho)})
    metric_rows.sort(key=lambda r: -(r["agreement"] if r["agreement"] is not None else -1))

    # -- annotators ----------------------------------------------------------------------------------
    units: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for r in answered:
        units[r["pair_id"]].append((r["annotator"], r["label"]))
    raw, n_pairs, per_pair = pairwise_agreement(list(units.values()))
    alpha = krippendorff_alpha_nominal([[lab for _, lab in u] for u in units.values()])
    original = {(r["annotator"], r["pair_id"]): r["label"] for r in first}
    names = [a["name"] for a in store.annotators()]
    ann_rows = []
    for name in names:
        mine = [r for r in first if r["annotator"] == name]
        reps = [r for r in rows if r["is_repeat"] and r["annotator"] == name and r["label"] != "skip"
                and original.get((name, r["pair_id"]), "skip") != "skip"]
        same = sum(r["label"] == original[(name, r["pair_id"])] for r in reps)
        agree_o = sum(v[0] for k, v in per_pair.items() if name in k)
        total_o = sum(v[1] for k, v in per_pair.items() if name in k)
        ann_rows.append({"annotator": name, "answers": len(mine), "skips": sum(r["label"] == "skip" for r in mine),
                         "ties": sum(r["label"] == "tie" for r in mine),
                         "agreement_with_others": _num(agree_o / total_o) if total_o else None, "shared_judgements": total_o,
                         "repeats": len(reps), "self_consistency": _num(same / len(reps)) if reps else None,
                         "median_seconds": _num(float(np.median([r["created_at"] - r["shown_at"] for r in mine]))) if mine else None})

    covered = len({r["pair_id"] for r in answered})
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {**counts, "answers": len(answered), "skips": sum(r["label"] == "skip" for r in first),
                   "ties": sum(r["label"] == "tie" for r in answered), "repeats": len(rows) - len(first),
                   "pairs_covered": covered, "pairs_multi_annotated": sum(len({a for a, _ in u}) >= 2 for u in units.values())},
        "bradley_terry": {"units": "natural log-odds, mean 0 over generators", "interval": "95% Wald (penalised likelihood curvature)",
                          "prior_variance": PRIOR_VARIANCE, "comparisons": len(fy)},
        "generators": gen_rows,
        "metrics": metric_rows,
        "annotators": ann_rows,
        "agreement": {"pairwise": _num(raw) if raw is not None else None, "annotator_pairs": n_pairs,
                      "krippendorff_alpha": _num(alpha) if alpha is not None else None},
    }


def _generator_metric_means(store: Store) -> dict[str, dict[str, float]]:
    """metric -> generator -> mean score over that generator's images."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with store.read() as conn:
        for gen, metrics in conn.execute("SELECT generator, metrics FROM items WHERE generator IS NOT NULL"):
            for name, v in json.loads(metrics).items():
                sums[name][gen].append(v)
    return {m: {g: float(np.mean(v)) for g, v in d.items()} for m, d in sums.items()}
