"""prefscore: aesthetic and human-preference scores for images behind one faithful interface.

>>> import prefscore
>>> [m.name for m in prefscore.list_metrics()]          # the registry
>>> metric = prefscore.load("pickscore")                # official weights (or model=<dir>)
>>> metric.score(["a.png", "b.png"], "a red fox")       # numpy array (N,)
>>> metric.compare(["a.png", "b.png"], "a red fox")     # preference probabilities
"""

from .base import Metric
from .errors import (
    CheckpointError,
    ImageError,
    ModelSourceError,
    PrefscoreError,
    PromptError,
    PromptTruncationWarning,
    ScoringError,
    UnknownMetricError,
)
from .images import set_max_pixels
from .registry import MetricSpec, get_spec, list_metrics, load

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ImageError",
    "Metric",
    "MetricSpec",
    "ModelSourceError",
    "PrefscoreError",
    "PromptError",
    "PromptTruncationWarning",
    "ScoringError",
    "UnknownMetricError",
    "__version__",
    "get_spec",
    "list_metrics",
    "load",
    "set_max_pixels",
]
