"""Exceptions raised by prefscore. Every message names the offending item and the reason."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class PrefscoreError(Exception):
    """Base class of every error prefscore raises on purpose."""


class UnknownMetricError(PrefscoreError, KeyError):
    """A metric name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ImageError(PrefscoreError, ValueError):
    """An image that cannot be read or converted (corrupt, truncated, empty, not an image, odd mode)."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class PromptError(PrefscoreError, ValueError):
    """Prompts missing for a prompt-aware metric, or not aligned with the images."""


class PromptTruncationWarning(UserWarning):
    """Prompts longer than a metric's text context were cut (as its reference implementation does)."""


class ModelSourceError(PrefscoreError, OSError):
    """A model that cannot be found locally and cannot be downloaded (offline, missing file)."""


class CheckpointError(PrefscoreError, ValueError):
    """A checkpoint whose tensors do not fit the metric (wrong shape, missing or unexpected tensor)."""


class ScoringError(PrefscoreError):
    """Some items of a batch could not be scored.

    Nothing is lost: ``scores`` holds every result (NaN where an item failed) and ``errors`` the
    ``(index, source, reason)`` of each failure.
    """

    def __init__(self, scores: np.ndarray, errors: Sequence[tuple[int, str, str]]):
        self.scores = scores
        self.errors = list(errors)
        shown = "\n".join(f"  [{i}] {src}: {why}" for i, src, why in self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(
            f"{len(self.errors)} of {len(scores)} items could not be scored "
            f"(the others were; see .scores, or pass on_error='nan'):\n{shown}{more}"
        )
