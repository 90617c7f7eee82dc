"""On-disk cache of backbone embeddings, keyed by the backbone's identity and the image's content.

Layout: ``<root>/<extractor.key>/image/<sha256[:2]>/<sha256>.npy`` (float32, one vector per image,
``sha256`` of the image file's bytes) and ``.../text/<sha256 of the UTF-8 prompt>.npy``. Renaming or
copying images keeps their cache entries; a different backbone (other weights, other preprocessing)
has another key. The default root is ``$PREFSCORE_CACHE/embeddings`` (``~/.cache/prefscore``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..backbones.loading import cache_dir
from ..data import DataError
from .features import EmbeddingEngine


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save(path: Path, vector: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, vector.astype(np.float32))
    os.replace(tmp, path)


class EmbeddingCache:
    """Embeddings computed once per (backbone, image content) and reused across training runs."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_dir() / "embeddings"
        self.hits = 0
        self.misses = 0

    def _image_path(self, key: str, sha: str) -> Path:
        return self.root / key / "image" / sha[:2] / f"{sha}.npy"

    def _text_path(self, key: str, sha: str) -> Path:
        return self.root / key / "text" / sha[:2] / f"{sha}.npy"

    def image_embeddings(self, extractor, paths: Sequence[str], batch_size: int = 32, device="cpu",
                         progress: bool | Callable[[int], None] = False) -> np.ndarray:
        """``(len(paths), d)`` float32 embeddings; missing ones are computed with the scoring engine.

        Unreadable images raise :class:`~prefscore.data.DataError` listing every one of them.
        """
        shas = [file_sha256(p) for p in paths]
        out = np.zeros((len(paths), extractor.image_dim), dtype=np.float32)
        todo: dict[str, int] = {}
        for i, sha in enumerate(shas):
            f = self._image_path(extractor.key, sha)
            if f.is_file():
                out[i] = np.load(f)
                self.hits += 1
            elif sha not in todo:
                todo[sha] = i
        if todo:
            self.misses += len(todo)
            engine = EmbeddingEngine(extractor, device=device, batch_size=batch_size)
            items = [paths[i] for i in todo.values()]
            values, errors = engine.score_records(items, None, progress=progress)
            if errors:
                raise DataError("image embeddings", [(src, why) for _, src, why in errors])
            for sha, vec in zip(todo, values):
                _save(self._image_path(extractor.key, sha), vec)
            computed = dict(zip(todo, values.astype(np.float32)))
            for i, sha in enumerate(shas):
                if sha in computed:
                    out[i] = computed[sha]
        return out

    def text_embeddings(self, extractor, prompts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(len(prompts), d)`` float32 text embeddings (each distinct prompt encoded once, then cached)."""
        shas = [hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts]
        out = np.zeros((len(prompts), extractor.text_dim), dtype=np.float32)
        todo: dict[str, str] = {}
        for i, (p, sha) in enumerate(zip(prompts, shas)):
            f = self._text_path(extractor.key, sha)
            if f.is_file():
                out[i] = np.load(f)
            else:
                todo.setdefault(sha, p)
        if todo:
            items = list(todo.items())
            computed = {}
            with torch.inference_mode():
                for s in range(0, len(items), batch_size):
                    chunk = items[s:s + batch_size]
                    feats = extractor.text_features([p for _, p in chunk]).float().cpu().numpy()
                    for (sha, _), vec in zip(chunk, feats):
                        _save(self._text_path(extractor.key, sha), vec)
                        computed[sha] = vec
            for i, sha in enumerate(shas):
                if sha in computed:
                    out[i] = computed[sha]
        return out
