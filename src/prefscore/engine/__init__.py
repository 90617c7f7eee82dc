"""Scoring at scale: the local engine (parallel decode, shared preprocessing and encoding, feature
cache, streamed output) and the Ray Data scale-out (:mod:`prefscore.engine.ray`, needs ``ray[data]``).

See ``docs/scale.md``.
"""

from .local import BatchResult, Engine, EngineOptions, score_metric

__all__ = ["BatchResult", "Engine", "EngineOptions", "score_metric"]
