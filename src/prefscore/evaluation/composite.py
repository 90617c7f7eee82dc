"""Composite scores: normalise several metrics against a fixed reference, orient them so that higher is
better, and combine them with weights given by the user or learned from human pairs.

The calibration (normaliser parameters, directions, weights, and the model source of every component)
is a JSON file. Reusing it keeps composites comparable across runs: a new batch of images is never
normalised against itself.

>>> cal = calibrate(reference_scores, normaliser="zscore", weights={"hpsv2": 0.7, "laion-aesthetic": 0.3})
>>> cal.save("composite.json")
>>> Calibration.load("composite.json").apply(new_scores)          # from precomputed columns
>>> prefscore.load("composite", model="composite.json").score(images, prompts)   # loads the metrics
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize

from ..base import Metric
from ..errors import CheckpointError, ImageError, ModelSourceError
from .scores import ScoreTable, output_range

FORMAT = "prefscore-composite"
VERSION = 1
NORMALISERS = ("zscore", "robust", "percentile", "minmax", "none")
MAX_REFERENCE = 4096  # percentile normaliser: reference values kept (quantiles beyond that)
MAD_SCALE = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal = 0.6745 sigma


class CalibrationError(CheckpointError):
    """A calibration file or reference set that cannot be used (named file, reason)."""


# -- normalisers ----------------------------------------------------------------------------------


@dataclass
class Normaliser:
    """Maps raw scores of one metric to a common scale (before orientation).

    * ``zscore``: ``(x - mean) / std`` of the reference (population std); about -3..3.
    * ``robust``: ``(x - median) / (1.4826 MAD)`` of the reference; equals the z-score for normal data.
    * ``percentile``: mid-rank fraction of reference values below ``x``, in [0, 1].
    * ``minmax``: ``(x - low) / (high - low)`` over the metric's declared ``output_range``, in [0, 1].
    * ``none``: the raw score.
    """

    kind: str
    params: dict = field(default_factory=dict)

    def apply(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        p = self.params
        if self.kind == "zscore":
            return (x - p["mean"]) / p["std"]
        if self.kind == "robust":
            return (x - p["median"]) / p["scale"]
        if self.kind == "percentile":
            ref = np.asarray(p["reference"], dtype=np.float64)
            left = np.searchsorted(ref, x, side="left")
            right = np.searchsorted(ref, x, side="right")
            out = (left + right) / (2.0 * ref.size)
            return np.where(np.isnan(x), np.nan, out)
        if self.kind == "minmax":
            return (x - p["low"]) / (p["high"] - p["low"])
        if self.kind == "none":
            return x.copy()
        raise CalibrationError(f"unknown normaliser {self.kind!r}; use one of {', '.join(NORMALISERS)}")

    def orient(self, z: np.ndarray, higher_is_better: bool) -> np.ndarray:
        """Flip a normalised score so that higher is better: ``-z``, or ``1 - z`` on [0, 1] scales."""
        if higher_is_better:
            return z
        return 1.0 - z if self.kind in ("percentile", "minmax") else -z

    @classmethod
    def fit(cls, kind: str, reference, column: str, value_range: tuple[float, float] | None = None) -> "Normaliser":
        """Fit on the reference scores of one metric (NaN ignored). ``value_range`` overrides the
        registry's ``output_range`` for ``minmax``."""
        if kind not in NORMALISERS:
            raise CalibrationError(f"unknown normaliser {kind!r}; use one of {', '.join(NORMALISERS)}")
        ref = np.asarray(reference, dtype=np.float64)
        ref = ref[np.isfinite(ref)]
        if kind == "minmax":
            low, high = value_range if value_range is not None else output_range(column)
            if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
                raise CalibrationError(
                    f"metric column {column!r} has no finite declared range ({low}, {high}); min-max needs one: use "
                    f"zscore, robust or percentile, or give the range")
            return cls("minmax", {"low": float(low), "high": float(high)})
        if kind == "none":
            return cls("none", {})
        if ref.size < 2:
            raise CalibrationError(f"metric column {column!r}: the reference set has {ref.size} finite score(s); need at least 2")
        if kind == "zscore":
            std = float(ref.std())
            if std == 0:
                raise CalibrationError(f"metric column {column!r}: every reference score is {ref[0]}; z-score undefined")
            return cls("zscore", {"mean": float(ref.mean()), "std": std, "n": int(ref.size)})
        if kind == "robust":
            med = float(np.median(ref))
            mad = float(np.median(np.abs(ref - med)))
            if mad == 0:
                raise CalibrationError(f"metric column {column!r}: more than half of the reference scores equal {med}; "
                                       f"the robust z-score (MAD) is undefined, use zscore or percentile")
            return cls("robust", {"median": med, "scale": MAD_SCALE * mad, "n": int(ref.size)})
        ref = np.sort(ref)
        if ref.size > MAX_REFERENCE:
            ref = np.quantile(ref, (np.arange(MAX_REFERENCE) + 0.5) / MAX_REFERENCE)
        return cls("percentile", {"reference": [float(v) for v in ref], "n": int(np.isfinite(np.asarray(reference, dtype=float)).sum())})


# -- components and calibration -------------------------------------------------------------------


@dataclass
class Component:
    """One metric output in the composite.

    ``column``: the score column (``hpsv2``, ``clip-iqa.quality``); ``metric``: the registry name
    used to load it (empty when the column is not a registry metric: precomputed scores only);
    ``model``/``options``: what ``prefscore.load`` gets; ``weight``: its weight (the composite is
    ``sum(weight * oriented normalised score)``).
    """

    column: str
    metric: str
    model: str | None
    options: dict
    higher_is_better: bool
    weight: float
    normaliser: Normaliser

    @property
    def output(self) -> str | None:
        from ..registry import column_metric

        found = column_metric(self.column) if self.metric else None
        return found[1] if found else None

    def to_dict(self) -> dict:
        return {"column": self.column, "metric": self.metric, "model": self.model, "options": self.options,
                "higher_is_better": self.higher_is_better, "weight": self.weight,
                "normaliser": {"kind": self.normaliser.kind, **self.normaliser.params}}

    @classmethod
    def from_dict(cls, d: dict, source: str) -> "Component":
        try:
            norm = dict(d["normaliser"])
            kind = norm.pop("kind")
            return cls(str(d["column"]), str(d.get("metric") or ""), d.get("model"), dict(d.get("options") or {}),
                       bool(d["higher_is_better"]), float(d["weight"]), Normaliser(kind, norm))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: component {d.get('column', '?')!r} is malformed ({exc})") from None


@dataclass
class Calibration:
    """Everything needed to compute a composite the same way on any later run.

    ``temperature``: with learned weights, ``P(a preferred to b) = sigmoid((c_a - c_b) / temperature)``
    for composites ``c`` (None for user weights). ``fit``: statistics of the weight fit.
    """

    components: list[Component]
    normaliser: str
    weights_from: str
    temperature: float | None = None
    fit: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    created: str = ""
    prefscore_version: str = ""

    @property
    def columns(self) -> list[str]:
        return [c.column for c in self.components]

    @property
    def weights(self) -> dict[str, float]:
        return {c.column: c.weight for c in self.components}

    @property
    def fingerprint(self) -> str:
        """A short hash of the components (normalisers, directions, weights): equal calibrations, equal ids."""
        blob = json.dumps([c.to_dict() for c in self.components], sort_keys=True, default=float).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def normalise(self, values: Mapping[str, Sequence[float]]) -> np.ndarray:
        """``(n, k)`` oriented normalised scores of the components, from raw columns ``values[column]``."""
        missing = [c.column for c in self.components if c.column not in values]
        if missing:
            raise KeyError(f"scores for component(s) {', '.join(missing)} are missing (have: {', '.join(map(str, values))})")
        cols = [c.normaliser.orient(c.normaliser.apply(values[c.column]), c.higher_is_better) for c in self.components]
        return np.column_stack(cols)

    def combine(self, normalised: np.ndarray) -> np.ndarray:
        w = np.asarray([c.weight for c in self.components], dtype=np.float64)
        return np.asarray(normalised, dtype=np.float64) @ w

    def apply(self, scores) -> np.ndarray:
        """Composite score per row of ``scores`` (a :class:`ScoreTable`, a DataFrame or a mapping
        column -> values) holding the raw component columns. NaN where a component is NaN."""
        if isinstance(scores, ScoreTable):
            values = scores.values
        elif hasattr(scores, "columns") and hasattr(scores, "__getitem__") and not isinstance(scores, Mapping):
            values = {c: scores[c].to_numpy(dtype=np.float64) for c in scores.columns if c in self.columns}
        else:
            values = scores
        return self.combine(self.normalise(values))

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "id": self.fingerprint, "normaliser": self.normaliser,
                "weights_from": self.weights_from, "temperature": self.temperature, "fit": self.fit,
                "reference": self.reference, "created": self.created, "prefscore_version": self.prefscore_version,
                "components": [c.to_dict() for c in self.components]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path).expanduser()
        if path.is_dir():
            candidates = [path / "composite.json", path / "calibration.json"]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise ModelSourceError(f"{path}: no composite.json or calibration.json in this folder")
            path = found[0]
        if not path.is_file():
            raise ModelSourceError(f"{path}: calibration file not found (create one with `prefscore calibrate`)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CalibrationError(f"{path}: not a prefscore composite calibration (no \"format\": \"{FORMAT}\")")
        if int(d.get("version", 0)) > VERSION:
            raise CalibrationError(f"{path}: calibration version {d['version']} is newer than this prefscore understands ({VERSION})")
        comps = [Component.from_dict(c, str(path)) for c in d.get("components", [])]
        if not comps:
            raise CalibrationError(f"{path}: no components")
        cal = cls(comps, d.get("normaliser", ""), d.get("weights_from", ""), d.get("temperature"), d.get("fit", {}),
                  d.get("reference", {}), d.get("created", ""), d.get("prefscore_version", ""))
        if d.get("id") and d["id"] != cal.fingerprint:
            raise CalibrationError(f"{path}: the components were edited after calibration (id {d['id']} != {cal.fingerprint}); "
                                   f"recalibrate, or delete the \"id\" field to accept the edit")
        return cal


# -- learning weights -------------------------------------------------------------------------------


@dataclass
class WeightFit:
    """Bradley-Terry fit ``P(a > b) = sigmoid(beta . (x_a - x_b))`` over oriented normalised metrics.

    ``weights = beta / sum(|beta|)`` and ``temperature = 1 / sum(|beta|)``.
    """

    beta: np.ndarray
    weights: np.ndarray
    temperature: float
    n_pairs: int
    log_loss: float
    accuracy: float
    l2: float
    converged: bool


def fit_weights(diff, target, l2: float = 1e-3, nonnegative: bool = False, sample_weight=None) -> WeightFit:
    """Fit Bradley-Terry weights by regularised logistic regression without intercept.

    ``diff``: ``(n, k)`` differences ``x_a - x_b`` of oriented normalised scores; ``target``: 1 when
    a was preferred, 0 when b, 0.5 for a tie (a soft label, as in Pick-a-Pic's loss). ``l2``: ridge
    penalty on beta per pair (``l2 * |beta|^2`` added to the mean log loss). ``nonnegative``:
    constrain every weight to be >= 0.
    """
    X = np.asarray(diff, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"diff must be (n, k) with n = len(target); got {X.shape} and {y.size}")
    sw = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    X, y, sw = X[ok], y[ok], sw[ok]
    if X.shape[0] < 2:
        raise CalibrationError("need at least 2 judged pairs with scores to learn weights")
    sw = sw / sw.sum()

    def loss(beta):
        z = X @ beta
        # mean soft-label cross entropy: log(1 + e^z) - y z, computed stably
        ll = np.logaddexp(0.0, z) - y * z
        p = 1.0 / (1.0 + np.exp(-z))
        grad = X.T @ (sw * (p - y)) + 2 * l2 * beta
        return float(sw @ ll + l2 * beta @ beta), grad

    k = X.shape[1]
    bounds = [(0.0, None)] * k if nonnegative else None
    res = optimize.minimize(loss, np.zeros(k), jac=True, method="L-BFGS-B", bounds=bounds)
    beta = res.x
    total = float(np.abs(beta).sum())
    if total == 0:
        raise CalibrationError("the fitted weights are all zero: the metrics carry no signal about these human pairs")
    z = X @ beta
    strict = y != 0.5
    acc = float(np.mean((z[strict] > 0) == (y[strict] > 0.5))) if strict.any() else math.nan
    ll = float(sw @ (np.logaddexp(0.0, z) - y * z))
    return WeightFit(beta, beta / total, 1.0 / total, int(X.shape[0]), ll, acc, l2, bool(res.success))


# -- building a calibration -------------------------------------------------------------------------


def calibrate(
    reference,
    columns: Sequence[str] | None = None,
    normaliser: str | Mapping[str, str] = "zscore",
    weights: Mapping[str, float] | str | None = "equal",
    pairs=None,
    pair_scores=None,
    models: Mapping[str, str | None] | None = None,
    options: Mapping[str, Mapping] | None = None,
    lower_is_better: Sequence[str] = (),
    ranges: Mapping[str, tuple[float, float]] | None = None,
    l2: float = 1e-3,
    nonnegative: bool = False,
    registry_metrics: bool = True,
) -> Calibration:
    """Build a :class:`Calibration` from reference scores.

    ``reference``: a score table (path, :class:`ScoreTable` or DataFrame) of a fixed reference image
    set; ``columns``: the components (default: every score column). ``normaliser``: one kind for all,
    or per column. ``weights``: a mapping column -> weight, ``"equal"`` (1/k each), or ``"fit"`` to
    learn them from human ``pairs`` (a judgement file or :class:`prefscore.data.Judgements`; rankings
    and ratings are turned into pairs) whose images are scored in ``pair_scores`` (default: the
    reference table). ``models``/``options``: the source and options recorded for each metric, so
    ``prefscore.load("composite", model=<file>)`` can load them. Columns that are not registry
    metrics (or all, with ``registry_metrics=False``) can only be combined from precomputed scores.
    """
    from .. import __version__
    from ..registry import column_metric

    table = _as_table(reference, columns, lower_is_better)
    cols = list(columns) if columns else table.columns
    kinds = {c: (normaliser if isinstance(normaliser, str) else normaliser.get(c, "zscore")) for c in cols}
    comps: list[Component] = []
    models = dict(models or {})
    options = {k: dict(v) for k, v in (options or {}).items()}
    for c in cols:
        found = column_metric(c) if registry_metrics else None
        metric = found[0] if found else ""
        base = c if found is None or found[1] is None else c[: -len(found[1]) - 1]  # the column's metric part
        hib = table.higher_is_better[c] if c not in lower_is_better else False
        norm = Normaliser.fit(kinds[c], table.values[c], c, (ranges or {}).get(c))
        model = models.get(c, models.get(base))
        opts = options.get(c, options.get(base, {}))
        comps.append(Component(c, metric, None if model is None else str(model), opts, hib, 1.0 / len(cols), norm))
    cal = Calibration(comps, normaliser if isinstance(normaliser, str) else "mixed", "equal",
                      reference={"n": len(table), "source": table.source},
                      created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      prefscore_version=__version__)
    if isinstance(weights, Mapping):
        unknown = set(weights) - set(cols)
        if unknown:
            raise CalibrationError(f"weights for unknown component(s) {', '.join(sorted(unknown))}; components: {', '.join(cols)}")
        for comp in comps:
            comp.weight = float(weights.get(comp.column, 0.0))
        cal.weights_from = "user"
    elif weights == "fit":
        if pairs is None:
            raise CalibrationError("weights='fit' needs human pairs (pairs=...)")
        diff, target = pair_differences(cal, pairs, pair_scores if pair_scores is not None else table)
        fit = fit_weights(diff, target, l2=l2, nonnegative=nonnegative)
        for comp, w in zip(comps, fit.weights):
            comp.weight = float(w)
        cal.weights_from = "fit"
        cal.temperature = fit.temperature
        cal.fit = {"n_pairs": fit.n_pairs, "log_loss": fit.log_loss, "accuracy": fit.accuracy, "l2": l2,
                   "nonnegative": nonnegative, "converged": fit.converged, "beta": [float(b) for b in fit.beta]}
    elif weights not in ("equal", None):
        raise CalibrationError(f"weights must be a mapping, 'equal' or 'fit', not {weights!r}")
    return cal


def _as_table(scores, columns, lower_is_better=()) -> ScoreTable:
    if isinstance(scores, ScoreTable):
        return scores.select(columns) if columns else scores
    if isinstance(scores, (str, Path)):
        return ScoreTable.read(scores, columns, lower_is_better)
    return ScoreTable.from_frame(scores, columns, lower_is_better, "reference scores")


def pair_differences(cal: Calibration, pairs, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(x_a - x_b, target)`` of oriented normalised component scores for human pairs.

    ``pairs``: a judgement file or Judgements (pairs kept with ties; rankings expanded to strict pairs;
    ratings to pairs of differently rated images of the same prompt). ``scores``: score table for
    their images.
    """
    from ..data import Judgements, load_judgements, rating_pairs

    judgements = pairs if isinstance(pairs, Judgements) else load_judgements(pairs, check_images=False)
    if judgements.kind == "ratings":
        plist = rating_pairs(judgements.records)  # type: ignore[arg-type]
    else:
        plist = judgements.pairs()
    table = _as_table(scores, None)
    prompts = [p.prompt for p in plist] if judgements.has_prompts else None
    a = table.select(cal.columns).lookup([p.image_a for p in plist], prompts)
    b = table.select(cal.columns).lookup([p.image_b for p in plist], prompts)
    cols = cal.columns
    na = cal.normalise({c: a[:, i] for i, c in enumerate(cols)})
    nb = cal.normalise({c: b[:, i] for i, c in enumerate(cols)})
    return na - nb, np.asarray([p.target for p in plist], dtype=np.float64)


# -- the composite as a metric ----------------------------------------------------------------------


class CompositeMetric(Metric):
    """A calibrated composite usable like any metric: ``prefscore.load("composite", model=<file>)``.

    Loads each component metric with the source and options recorded in the calibration, decodes
    every image once, scores it with each metric, normalises, orients and combines. The score has
    the calibration's scale (z-score: about -3..3; percentile/minmax: about 0..1 times the weights).
    """

    def __init__(self, spec, source: str, device="cpu", dtype="float32", **options):
        super().__init__(device, dtype)
        self.spec = spec
        if options:
            raise TypeError(f"metric 'composite' takes no options (got {', '.join(sorted(options))}); "
                            f"the calibration file records each component's options")
        self.source = source
        self.calibration = Calibration.load(source)
        from ..registry import load

        self.metrics: dict[tuple, Metric] = {}
        self._which: list[tuple[tuple, int]] = []
        for comp in self.calibration.components:
            if not comp.metric:
                raise CalibrationError(
                    f"{source}: component {comp.column!r} is not a registry metric, so it cannot be scored here; "
                    f"combine precomputed scores with Calibration.apply() instead")
            key = (comp.metric, comp.model, json.dumps(comp.options, sort_keys=True))
            if key not in self.metrics:
                self.metrics[key] = load(comp.metric, model=comp.model, device=device, dtype=dtype, **comp.options)
            metric = self.metrics[key]
            names = metric.output_names
            if comp.output is None:
                if len(names) != 1:
                    raise CalibrationError(f"{source}: component {comp.column!r}: metric '{comp.metric}' has outputs "
                                           f"{', '.join(names)}; name one as '{comp.metric}.<output>'")
                self._which.append((key, 0))
            else:
                if comp.output not in names:
                    raise CalibrationError(f"{source}: component {comp.column!r}: metric '{comp.metric}' has no output "
                                           f"{comp.output!r} (outputs: {', '.join(names)})")
                self._which.append((key, names.index(comp.output)))

    @property
    def needs_prompt(self) -> bool:
        return any(m.needs_prompt for m in self.metrics.values())

    def preference_temperature(self) -> float:
        if self.calibration.temperature is None:
            raise NotImplementedError("this composite's weights were given by hand; only a calibration with learned "
                                      "weights (weights='fit') has a preference temperature")
        return float(self.calibration.temperature)

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.weight:+.3g}*{c.column}" for c in self.calibration.components)
        return f"<prefscore composite {self.calibration.fingerprint} ({parts}) on {self.device}>"

    def _raw(self, items, prompts, batch_size, progress):
        """Raw component scores ``(n, k)`` and errors, decoding every image once."""
        from ..images import describe, load_image

        n = len(items)
        decoded, ok, errors = [], [], []
        for i, item in enumerate(items):
            name = describe(item, i)
            try:
                decoded.append(load_image(item, name))
                ok.append(i)
            except ImageError as exc:
                errors.append((i, exc.source, exc.reason))
        raw = np.full((n, len(self._which)), math.nan)
        outputs: dict[tuple, np.ndarray] = {}
        n_metrics = len(self.metrics)
        for m_i, (key, metric) in enumerate(self.metrics.items()):
            if callable(progress):
                def cb(done, _m=m_i):  # noqa: E306 - overall items done, as a fraction of all metric passes
                    progress((_m * n + done) // n_metrics)
            else:
                cb = progress
            batch_prompts = [prompts[i] for i in ok] if (metric.needs_prompt and prompts is not None) else None
            out, errs = metric.score_records(decoded, batch_prompts, batch_size, cb if progress else False)
            full = np.full((n, len(metric.output_names)), math.nan)
            full[ok] = out
            outputs[key] = full
            seen = {e[0] for e in errors}
            for j, source, reason in errs:
                if ok[j] not in seen:
                    errors.append((ok[j], source, f"{key[0]}: {reason}"))
        for k, (key, col) in enumerate(self._which):
            raw[:, k] = outputs[key][:, col]
        return raw, sorted(errors)

    def _score_items(self, items, prompts, batch_size, progress):
        raw, errors = self._raw(items, prompts, batch_size, progress)
        values = {c.column: raw[:, k] for k, c in enumerate(self.calibration.components)}
        return self.calibration.apply(values)[:, None], errors

    def components(self, images, prompts=None, batch_size: int | None = None):
        """A DataFrame with each component's raw and normalised (oriented) score and the composite."""
        import pandas as pd

        from ..base import align_prompts

        items = list(images)
        aligned = align_prompts(prompts, len(items), "composite", self.needs_prompt) if self.needs_prompt else None
        raw, _ = self._raw(items, aligned, batch_size or self.default_batch_size, False)
        cols = self.calibration.columns
        norm = self.calibration.normalise({c: raw[:, k] for k, c in enumerate(cols)})
        frame = pd.DataFrame({**{c: raw[:, k] for k, c in enumerate(cols)},
                              **{f"{c}:normalised": norm[:, k] for k, c in enumerate(cols)}})
        frame["composite"] = self.calibration.combine(norm)
        return frame
