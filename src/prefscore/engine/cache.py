"""On-disk cache of image-tower features for scoring, on the layout of the training embedding cache.

Entries live at ``<root>/<key>/image/<sha[:2]>/<sha>.npy`` (float32, one vector per image), exactly
as :class:`prefscore.training.cache.EmbeddingCache` lays them out, with ``key`` naming the tower's
weights, the preprocessing and the numeric mode (see :meth:`SharedTower.cache_key
<prefscore.engine.shared.SharedTower.cache_key>`) and ``sha`` the SHA-256 of the image's content.
Scoring keys start with ``tower-`` and never collide with the training keys (those hold
L2-normalised embeddings, these the raw projected features each metric's head expects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..training.cache import EmbeddingCache, _save


class FeatureCache(EmbeddingCache):
    """Read/write access to cached tower features by content hash (default root:
    ``$PREFSCORE_CACHE/embeddings``). Writes are atomic (temporary file + rename), so concurrent
    workers and interrupted runs never leave half-written entries."""

    def __init__(self, root: str | Path | None = None):
        super().__init__(root)

    def has(self, key: str, sha: str) -> bool:
        return self._image_path(key, sha).is_file()

    def lookup(self, key: str, shas: Sequence[str]) -> tuple[list[bool], np.ndarray | None]:
        """``(found, values)``: a flag per sha and an ``(N, d)`` float32 array (rows of misses are 0);
        ``values`` is None when nothing was found (the dimension is then unknown)."""
        found: list[bool] = []
        rows: list[np.ndarray | None] = []
        for sha in shas:
            path = self._image_path(key, sha)
            try:
                rows.append(np.load(path))
                found.append(True)
                self.hits += 1
            except (OSError, ValueError):
                rows.append(None)
                found.append(False)
                self.misses += 1
        present = [r for r in rows if r is not None]
        if not present:
            return found, None
        values = np.zeros((len(shas), present[0].shape[-1]), dtype=np.float32)
        for i, r in enumerate(rows):
            if r is not None:
                values[i] = r
        return found, values

    def store(self, key: str, shas: Sequence[str], values: np.ndarray) -> None:
        for sha, vec in zip(shas, values):
            _save(self._image_path(key, sha), np.asarray(vec, dtype=np.float32))
