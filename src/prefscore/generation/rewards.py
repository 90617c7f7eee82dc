"""Differentiable rewards for generators: prefscore metrics, weighted sums and calibrated composites.

A :class:`Reward` maps a float RGB batch ``(B, 3, H, W)`` in [0, 1] and its prompts to a ``(B,)``
tensor that is differentiable with respect to the pixels, oriented so that **higher is better**
(a lower-is-better metric is negated). It is what ReFL / DRaFT optimise and what reward-guided
sampling ranks by.

* :class:`MetricReward` - one prefscore metric through :meth:`~prefscore.Metric.score_tensor`
  (one output column for multi-output metrics such as CLIP-IQA);
* :class:`WeightedReward` - ``sum(weight_i * reward_i)``;
* :class:`CompositeReward` - a calibrated composite (``prefscore.load("composite", model=cal.json)``)
  computed in torch: its z-score, robust and min-max normalisers are affine maps, so the composite
  is differentiable; the percentile normaliser is a step function and is refused;
* :class:`FunctionReward` - any differentiable callable ``fn(pixels, prompts) -> (B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..base import Metric


class Reward:
    """A differentiable, higher-is-better score of images ``(B, 3, H, W)`` in [0, 1] and prompts."""

    name: str = "reward"

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def metrics(self) -> list[Metric]:
        """The prefscore metrics inside (to move them to a device, or to freeze them)."""
        return []


class FunctionReward(Reward):
    """Wraps ``fn(pixels, prompts) -> (B,)`` (already higher-is-better and differentiable)."""

    def __init__(self, fn: Callable[[torch.Tensor, Sequence[str]], torch.Tensor], name: str):
        self.fn = fn
        self.name = name

    def __call__(self, pixels, prompts):
        return self.fn(pixels, list(prompts))


class MetricReward(Reward):
    """One metric's :meth:`~prefscore.Metric.score_tensor`, negated when lower is better.

    ``output``: the output column of a multi-output metric (e.g. ``"quality"`` for CLIP-IQA);
    ``quantize``: forwarded to the metric's differentiable preprocessing (True: rounds to 8-bit
    levels with straight-through gradients, matching :meth:`~prefscore.Metric.score`).
    """

    def __init__(self, metric: Metric, output: str | None = None, quantize: bool = True):
        self.metric = metric
        names = tuple(metric.output_names)
        if output is None:
            if len(names) != 1:
                raise ValueError(f"metric '{metric.name}' has outputs {', '.join(names)}; choose one with output=")
            self.column = 0
        else:
            if output not in names:
                raise ValueError(f"metric '{metric.name}' has no output {output!r} (outputs: {', '.join(names)})")
            self.column = names.index(output)
        self.sign = 1.0 if metric.spec.higher_is_better else -1.0
        self.quantize = quantize
        self.name = metric.name if output is None else f"{metric.name}.{output}"

    @property
    def metrics(self) -> list[Metric]:
        return [self.metric]

    def __call__(self, pixels, prompts):
        out = self.metric.score_tensor(pixels, list(prompts) if self.metric.needs_prompt else None, quantize=self.quantize)
        if out.dim() == 2:
            out = out[:, self.column]
        return self.sign * out.float()


class WeightedReward(Reward):
    """``sum(weight * reward)`` over ``(reward, weight)`` pairs (each reward already oriented)."""

    def __init__(self, terms: Sequence[tuple[Reward, float]], name: str | None = None):
        if not terms:
            raise ValueError("a weighted reward needs at least one (reward, weight) term")
        self.terms = [(r, float(w)) for r, w in terms]
        self.name = name or " + ".join(f"{w:g}*{r.name}" for r, w in self.terms)

    @property
    def metrics(self) -> list[Metric]:
        return [m for r, _ in self.terms for m in r.metrics]

    def __call__(self, pixels, prompts):
        total = None
        for reward, weight in self.terms:
            value = weight * reward(pixels, prompts)
            total = value if total is None else total + value
        return total


@dataclass(frozen=True)
class _Affine:
    """``oriented = scale * raw + shift`` for one composite component (normalise, then orient)."""

    scale: float
    shift: float


def _affine(normaliser, higher_is_better: bool, column: str) -> _Affine:
    p, kind = normaliser.params, normaliser.kind
    if kind == "zscore":
        scale, shift = 1.0 / p["std"], -p["mean"] / p["std"]
    elif kind == "robust":
        scale, shift = 1.0 / p["scale"], -p["median"] / p["scale"]
    elif kind == "minmax":
        width = p["high"] - p["low"]
        scale, shift = 1.0 / width, -p["low"] / width
    elif kind == "none":
        scale, shift = 1.0, 0.0
    else:
        raise ValueError(
            f"composite component {column!r} uses the {kind!r} normaliser, a step function of the score with no useful "
            f"gradient; recalibrate with zscore, robust, minmax or none to optimise the composite")
    if higher_is_better:
        return _Affine(scale, shift)
    if kind == "minmax":  # orient: 1 - z
        return _Affine(-scale, 1.0 - shift)
    return _Affine(-scale, -shift)


class CompositeReward(Reward):
    """A calibrated composite (:class:`prefscore.evaluation.composite.CompositeMetric`) in torch.

    Equals ``composite.score(images, prompts)`` up to each component's ``score_tensor`` gap:
    ``sum_i weight_i * orient(normalise_i(raw_i))``.
    """

    def __init__(self, composite, quantize: bool = True):
        self.composite = composite
        self.quantize = quantize
        cal = composite.calibration
        self.parts = []
        for comp, (key, col) in zip(cal.components, composite._which):
            self.parts.append((key, col, comp.weight, _affine(comp.normaliser, comp.higher_is_better, comp.column)))
        self.name = f"composite:{cal.fingerprint}"

    @property
    def metrics(self) -> list[Metric]:
        return list(self.composite.metrics.values())

    def __call__(self, pixels, prompts):
        raw = {}
        for key, metric in self.composite.metrics.items():
            out = metric.score_tensor(pixels, list(prompts) if metric.needs_prompt else None, quantize=self.quantize)
            raw[key] = out[:, None] if out.dim() == 1 else out
        total = None
        for key, col, weight, aff in self.parts:
            value = weight * (aff.scale * raw[key][:, col].float() + aff.shift)
            total = value if total is None else total + value
        return total


def as_reward(reward, output: str | None = None, quantize: bool = True) -> Reward:
    """A :class:`Reward` from a Reward, a loaded Metric (composites included) or a callable."""
    if isinstance(reward, Reward):
        return reward
    if isinstance(reward, Metric):
        from ..evaluation.composite import CompositeMetric

        if isinstance(reward, CompositeMetric):
            return CompositeReward(reward, quantize=quantize)
        return MetricReward(reward, output=output, quantize=quantize)
    if callable(reward):
        return FunctionReward(reward, getattr(reward, "__name__", "reward"))
    raise TypeError(f"cannot use {type(reward).__name__} as a reward: pass a prefscore Metric, a Reward or a callable")


def load_reward(spec: str, model: str | None = None, composite: str | None = None, device: str = "cpu",
                dtype: str = "float32", output: str | None = None, **options) -> Reward:
    """A reward from the command line's words: ``composite`` (a calibration file), or a metric name
    with its ``model`` source; ``spec`` may be ``"name.output"`` for a multi-output metric, or a
    weighted sum ``"0.7*hpsv2+0.3*laion-aesthetic"`` (all from their default weights, or ``model``
    for every term)."""
    import prefscore

    if composite is not None:
        return as_reward(prefscore.load("composite", model=composite, device=device, dtype=dtype))
    if "+" in spec or "*" in spec:
        terms = []
        for part in spec.split("+"):
            weight, _, name = part.strip().rpartition("*")
            terms.append((load_reward(name.strip(), model, None, device, dtype, **options), float(weight) if weight else 1.0))
        return WeightedReward(terms)
    from ..errors import UnknownMetricError
    from ..registry import get_spec

    name, out = spec, None
    try:
        get_spec(spec)
    except UnknownMetricError:
        if "." not in spec:
            raise
        name, _, out = spec.rpartition(".")  # "clip-iqa.quality": metric and output column
    metric = prefscore.load(name, model=model, device=device, dtype=dtype, **options)
    return MetricReward(metric, output=output or out)
