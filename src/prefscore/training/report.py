"""Validation numbers for a trained model (pairwise accuracy with a bootstrap CI, tie-aware accuracy,
rating correlations), the training-curve plot and the model card."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation.agreement import choose_tie_threshold as choose_pickapic_threshold
from ..evaluation.agreement import tie_credits, tie_free_correct
from ..evaluation.stats import BootstrapPlan, choose_resampling, percentile_interval, plcc, rmse, srcc


@dataclass
class PairOutcome:
    """Scores of judged pairs: ``target`` 1 (a preferred), 0 (b) or 0.5 (tie); ``group`` = prompt."""

    score_a: np.ndarray
    score_b: np.ndarray
    target: np.ndarray
    group: np.ndarray


def pairwise_accuracy(o: PairOutcome) -> tuple[float, int]:
    """ImageReward's protocol: strict human pairs only (ties skipped), equal scores count as wrong.
    Returns ``(accuracy in [0, 1], number of strict pairs)``; NaN when there are none."""
    strict = o.target != 0.5
    n = int(strict.sum())
    if n == 0:
        return math.nan, 0
    correct = np.where(o.target[strict] > 0.5, o.score_a[strict] > o.score_b[strict], o.score_b[strict] > o.score_a[strict])
    return float(correct.mean()), n


def _delta_human(o: PairOutcome) -> tuple[np.ndarray, np.ndarray]:
    """``s_a - s_b`` and the human label in the evaluation package's coding (+1 a, -1 b, 0 tie)."""
    return o.score_a - o.score_b, np.where(o.target == 0.5, 0, np.where(o.target > 0.5, 1, -1))


def bootstrap_accuracy_ci(o: PairOutcome, reps: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, str]:
    """Percentile bootstrap CI of :func:`pairwise_accuracy`, resampling prompts (the independent unit).

    Returns ``(low, high, resampled)``: ``resampled`` says what was resampled (``"prompts"``; ``"pairs
    (fallback: ...)"`` with fewer prompts than :func:`~prefscore.evaluation.stats.min_units`); with too
    few pairs as well the interval is NaN and ``resampled`` says why (``"n/a (...)"``).
    """
    strict = o.target != 0.5
    if not strict.any() or reps <= 0:
        return math.nan, math.nan, "n/a (no strict pairs)" if reps > 0 else "no bootstrap"
    delta, human = _delta_human(o)
    correct = tie_free_correct(delta[strict], human[strict])
    how = choose_resampling(o.group[strict], "prompt", np.arange(int(strict.sum())), "pair", level)
    if not how.available:
        return math.nan, math.nan, how.describe()
    samples = BootstrapPlan(how.labels, n_boot=reps, seed=seed).ratio_of_sums(correct)[:, 0]
    interval = percentile_interval(float(correct.mean()), samples, level)
    return interval.low, interval.high, how.describe()


def accuracy_ci_text(m: dict) -> str:
    """``95% bootstrap CI 0.800-0.900; resampled: prompts`` (or what replaced prompts, or why there is none)."""
    ci = m.get("pairwise_accuracy_ci") or [math.nan, math.nan]
    how = m.get("pairwise_accuracy_ci_resampled", "prompts")
    if ci[0] is None or not math.isfinite(ci[0]):
        return f"95% CI {how if how.startswith('n/a') else 'n/a'}"
    return f"95% bootstrap CI {_fmt(ci[0])}-{_fmt(ci[1])}; resampled: {how}"


def preference_probability(o: PairOutcome, temperature: float) -> np.ndarray:
    """``P(a preferred) = sigmoid((s_a - s_b) / tau)``."""
    return 1.0 / (1.0 + np.exp(-(o.score_a - o.score_b) / temperature))


def tie_aware_accuracy(o: PairOutcome, temperature: float, threshold: float) -> float:
    """Pick-a-Pic's protocol: predict a tie when ``|p_a - p_b| <= threshold``, else the likelier image;
    credit 1 for a match, 0.5 when exactly one of prediction and label is a tie, else 0."""
    if not len(o.target):
        return math.nan
    delta, human = _delta_human(o)
    return float(tie_credits(delta, human, threshold, mode="pickapic", temperature=temperature).mean())


def tie_chance(o: PairOutcome, threshold: float) -> float:
    """Pick-a-Pic's random-baseline credit for a threshold: ``(t + (1 - t)/2) ties/N + 0.5 non-ties/N``."""
    n = len(o.target)
    ties = float((o.target == 0.5).sum())
    return ((threshold + (1 - threshold) / 2) * ties + 0.5 * (n - ties)) / n if n else math.nan


def choose_tie_threshold(o: PairOutcome, temperature: float) -> float:
    """Pick-a-Pic's threshold choice: the best of {0, 0.1, ..., 1} on ``o`` (0 without ties; the
    smallest wins ties)."""
    if not (o.target == 0.5).any():
        return 0.0
    delta, human = _delta_human(o)
    return choose_pickapic_threshold(delta, human, mode="pickapic", temperature=temperature)[0]


def rating_metrics(pred: np.ndarray, target: np.ndarray, reps: int = 1000, seed: int = 0) -> dict:
    """SRCC and PLCC (plain, no logistic mapping) with a percentile bootstrap CI of SRCC over images
    (at least :func:`~prefscore.evaluation.stats.min_units` images; ``srcc_ci_resampled`` says), and RMSE."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    out = {"n": int(len(pred)), "rmse": rmse(pred, target)}
    if len(pred) < 3:
        return out | {"srcc": math.nan, "plcc": math.nan}
    out["srcc"], out["plcc"] = srcc(pred, target), plcc(pred, target)
    if reps > 0:
        how = choose_resampling(np.arange(len(pred)), "image")
        out["srcc_ci_resampled"] = how.describe()
        if how.available:
            samples = BootstrapPlan(how.labels, n_boot=reps, seed=seed).apply(lambda rows: srcc(pred[rows], target[rows]))
            interval = percentile_interval(out["srcc"], samples[:, 0])
            if math.isfinite(interval.low):
                out["srcc_ci"] = [interval.low, interval.high]
    return out


def plot_curve(history: Sequence[dict], path: Path, x_key: str = "epoch") -> Path:
    """Training curve PNG: train and validation loss (left axis), validation accuracy (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str):
        pts = [(h[x_key], h[key]) for h in history if h.get(key) is not None and not math.isnan(h[key])]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    style = {"marker": "o", "markersize": 3} if len(series("val_loss")[0]) < len(history) else {}
    ax.plot(*series("train_loss"), label="train loss", color="tab:blue")
    if series("val_loss")[0]:
        ax.plot(*series("val_loss"), label="val loss", color="tab:orange", **style)
    ax.set_xlabel(x_key)
    ax.set_ylabel("loss")
    lines, labels = ax.get_legend_handles_labels()
    if series("val_accuracy")[0]:
        ax2 = ax.twinx()
        ax2.plot(*series("val_accuracy"), label="val pairwise accuracy", color="tab:green", **style)
        ax2.set_ylabel("pairwise accuracy")
        ax2.set_ylim(0, 1)
        l2, lab2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lab2
    ax.legend(lines, labels, loc="best", fontsize=8)
    ax.set_title("training curve")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _backbone_line(b: dict) -> str:
    if b.get("type") == "stats":
        return f"weight-free image statistics `{b.get('version')}` ({len(b.get('features', []))} features)"
    tuned = " (fine-tuned here)" if b.get("fine_tuned") else ""
    return f"CLIP `{b.get('source')}`{tuned}"


def model_card(meta: dict) -> str:
    """The README.md of a model directory, from its ``prefscore.json`` contents."""
    m, d = meta.get("metrics", {}), meta.get("data", {})
    lines = [
        f"# {meta.get('name', 'prefscore custom model')}",
        "",
        f"A {meta['objective']} model trained with `prefscore train` "
        f"({'fine-tuned CLIP' if meta['kind'] == 'finetune' else meta['head']['kind'] + ' head on frozen ' + meta['backbone']['type'] + ' features'}; "
        f"{'prompt-aware' if meta['prompt_aware'] else 'image only'}).",
        "",
        "```python",
        "import prefscore",
        "model = prefscore.load(\"<this directory>\")",
        "model.score([\"a.png\", \"b.png\"]" + (', "a prompt")' if meta["prompt_aware"] else ")"),
        "```",
        "",
        "## Data and split",
        f"- data: `{d.get('train_file')}` ({d.get('kind')})" + (f", validation file `{d['val_file']}`" if d.get("val_file") else ""),
        f"- split: {d.get('split')}",
        f"- train: {d.get('train_records')} records, {d.get('train_pairs', 'n/a')} pairs, {d.get('train_groups')} prompts/groups, {d.get('train_images')} images",
        f"- validation: {d.get('val_records')} records, {d.get('val_pairs', 'n/a')} pairs, {d.get('val_groups')} prompts/groups, {d.get('val_images')} images",
        "",
        "## Validation results",
    ]
    if m.get("pairwise_accuracy") is not None:
        lines.append(
            f"- pairwise accuracy: **{_fmt(m['pairwise_accuracy'])}** ({accuracy_ci_text(m)}; "
            f"{m.get('strict_pairs')} strict pairs, human ties skipped, equal scores wrong; chance 0.5)"
        )
    if m.get("tie_aware_accuracy") is not None:
        lines.append(
            f"- tie-aware accuracy (Pick-a-Pic credit, tie when |p_a - p_b| <= {meta.get('tie_threshold')} chosen on the training split): "
            f"{_fmt(m['tie_aware_accuracy'])} (chance {_fmt(m.get('tie_chance'))})"
        )
    for key in ("srcc", "plcc", "rmse"):
        if m.get(key) is not None:
            extra = ""
            if key == "srcc" and m.get("srcc_ci"):
                extra = f" (95% CI {_fmt(m['srcc_ci'][0])}-{_fmt(m['srcc_ci'][1])}, images resampled)"
            elif key == "srcc" and m.get("srcc_ci_resampled", "").startswith("n/a"):
                extra = f" (95% CI {m['srcc_ci_resampled']})"
            lines.append(f"- {key.upper()}: {_fmt(m[key])}{extra}")
    lines += [
        "",
        "![training curve](training_curve.png)",
        "",
        "## Training",
        f"- backbone: {_backbone_line(meta['backbone'])}",
        f"- stopped at {meta.get('stopped')}, best at {meta.get('best')}",
        f"- configuration: `{json.dumps(meta.get('config'))}`",
        "",
        "## Limitations",
        "- The validation numbers come from prompts held out of the same data set; other prompts, image sources "
        "and annotators can give lower agreement.",
        "- Scores are only meaningful relative to each other (compare images of the same prompt).",
        "",
    ]
    return "\n".join(lines)
