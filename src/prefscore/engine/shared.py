"""Shared image encoding: one forward of an image tower per batch for every metric that holds it.

A metric opts in through two hooks of :class:`~prefscore.base.Metric`: ``preprocess_key()`` (the
identity of its preprocessing) and ``image_tower()`` (the module whose ``image_features(pixels)``
is the only use its ``forward`` makes of the pixels). While an engine runs, each such tower is
replaced by a :class:`SharedTower` that

* encodes a batch once and hands the same features to every metric of the batch whose tower holds
  the *same weights and configuration* (checked tensor by tensor, never guessed from names): e.g.
  ``laion-aesthetic`` and ``laion-aesthetic-v1`` on one ViT-L/14;
* optionally runs the tower under autocast (bf16/fp16) or ``torch.compile``;
* optionally reads and writes the on-disk feature cache (keyed by the tower's weights, the
  preprocessing and the numeric mode, and by the image's content hash).

Sharing only ever happens between metrics that receive the same pixels tensor, i.e. whose
preprocessing keys are equal, so it cannot change a score.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import TYPE_CHECKING, Hashable, Iterator, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from ..base import Metric
    from .cache import FeatureCache

AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def autocast_dtype(mode: str | None) -> torch.dtype | None:
    """``None``/``"fp32"`` (the parity default) -> None; ``"bf16"``/``"fp16"`` -> the autocast dtype."""
    if mode is None or str(mode).lower() in ("fp32", "float32", "none", ""):
        return None
    try:
        return AUTOCAST[str(mode).lower()]
    except KeyError:
        raise ValueError(f"autocast must be one of fp32, bf16, fp16, not {mode!r}") from None


def _config_of(tower) -> str:
    """What the weights do not say: the module tree (activations, attention classes) and any config."""
    parts = [repr(tower)]
    model = getattr(tower, "model", None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        parts.append(json.dumps(config.to_dict(), sort_keys=True, default=str))
    return "\n".join(parts)


def same_tower(a, b) -> bool:
    """True when two towers compute the same function: same structure and configuration, and every
    tensor of their state dicts equal (same shape, dtype, device and values)."""
    if a is b:
        return True
    if not (isinstance(a, torch.nn.Module) and isinstance(b, torch.nn.Module)) or type(a) is not type(b):
        return False
    if _config_of(a) != _config_of(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    for k, x in sa.items():
        y = sb[k]
        if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or not torch.equal(x, y):
            return False
    return True


def tower_fingerprint(tower) -> str:
    """A content fingerprint of a tower (config + every tensor's name, shape, dtype and up to 4096
    evenly spaced values), used as the feature-cache key. Fine-tuned weights differ everywhere, so
    sampling is enough to tell models apart; it costs milliseconds even for ViT-H."""
    h = hashlib.sha256(_config_of(tower).encode())
    if isinstance(tower, torch.nn.Module):
        for name, t in sorted(tower.state_dict().items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step].to("cpu", torch.float64).numpy()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(sample.tobytes())
    else:
        h.update(str(id(tower)).encode())
    return h.hexdigest()[:24]


class SharedTower:
    """Stands in for a metric's image tower while an engine runs (see the module docstring).

    Attributes other than ``image_features`` are those of the wrapped tower (``logit_scale``,
    ``text_features``, ``model``, ...). Inside a batch opened with :meth:`begin`, calls with that
    batch's pixels tensor return one encoding; any other call encodes directly.
    """

    def __init__(self, tower, autocast: str | None = None, compile: bool = False, cache: "FeatureCache | None" = None):
        self._tower = tower
        self._autocast = autocast_dtype(autocast)
        self._encode = torch.compile(tower.image_features) if compile else tower.image_features
        self._cache = cache
        self._fingerprint: str | None = None
        self._batch: tuple | None = None
        self.encodes = 0  #: forward passes of the tower (for tests and benchmarks)
        self.cached_rows = 0  #: rows served from the feature cache

    def __getattr__(self, name):
        return getattr(self._tower, name)

    @property
    def tower(self):
        return self._tower

    def cache_key(self, preprocess_key: Hashable) -> str | None:
        """Feature-cache folder name: tower weights + preprocessing + numeric mode; None without a cache."""
        if self._cache is None or preprocess_key is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = tower_fingerprint(self._tower)
        mode = f"autocast-{self._autocast}" if self._autocast is not None else "exact"
        pre = hashlib.sha256(repr(preprocess_key).encode()).hexdigest()[:12]
        return f"tower-{self._fingerprint}-pre-{pre}-{mode}"

    def has_cached(self, preprocess_key: Hashable, sha: str) -> bool:
        key = self.cache_key(preprocess_key)
        return key is not None and self._cache.has(key, sha)

    def begin(self, pixels: torch.Tensor, shas: Sequence[str | None] | None, preprocess_key: Hashable) -> None:
        """Open a batch: the next ``image_features(pixels)`` calls with this tensor share one result."""
        self._batch = (pixels, shas, preprocess_key, None)

    def end(self) -> None:
        self._batch = None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = self._batch
        if batch is None or pixels is not batch[0]:
            return self._forward(pixels)
        if batch[3] is None:
            feats = self._features(pixels, batch[1], batch[2])
            self._batch = (*batch[:3], feats)
            return feats
        return batch[3]

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encodes += 1
        if self._autocast is None:
            return self._encode(pixels)
        with torch.autocast(pixels.device.type, dtype=self._autocast):
            return self._encode(pixels)

    def _features(self, pixels, shas, preprocess_key) -> torch.Tensor:
        key = self.cache_key(preprocess_key)
        if key is None or shas is None or any(s is None for s in shas):
            return self._forward(pixels)
        found, values = self._cache.lookup(key, shas)
        missing = [i for i, f in enumerate(found) if not f]
        self.cached_rows += len(shas) - len(missing)
        if not missing:
            return torch.from_numpy(values).to(pixels.device, self._out_dtype())
        if pixels.dim() < 2 or pixels[0].numel() == 0:
            raise RuntimeError("feature cache entries vanished during the run; rerun to decode these images")
        computed = self._forward(pixels if len(missing) == len(shas) else pixels[missing])
        as_np = computed.float().cpu().numpy()
        self._cache.store(key, [shas[i] for i in missing], as_np)
        if values is None or len(missing) == len(shas):
            return computed
        values[missing] = as_np
        return torch.from_numpy(values).to(pixels.device, computed.dtype)

    def _out_dtype(self) -> torch.dtype:
        if self._autocast is not None:
            return self._autocast
        try:
            return next(self._tower.parameters()).dtype
        except (AttributeError, StopIteration):
            return torch.float32


def tower_slot(metric: "Metric"):
    """``(owner, attribute)`` of the metric's image tower, or None when it does not declare one."""
    slot = metric.image_tower()
    if slot is None:
        return None
    owner, attr = slot
    if not hasattr(owner, attr):
        raise AttributeError(f"metric '{metric.name}' declares image tower {attr!r} on {type(owner).__name__}, which has none")
    return owner, attr


@contextlib.contextmanager
def shared_towers(metrics: Sequence["Metric"], share: bool = True, autocast: str | None = None, compile: bool = False,
                  cache: "FeatureCache | None" = None) -> Iterator[dict[int, SharedTower]]:
    """Put a :class:`SharedTower` in place of each metric's declared tower for the duration of the block.

    Yields ``{id(metric): SharedTower}``. With ``share``, metrics whose towers are the same object or
    hold identical weights get one proxy (one encoding per batch). Towers are restored on exit.
    """
    proxies: list[SharedTower] = []
    by_metric: dict[int, SharedTower] = {}
    restore: list[tuple[object, str, object]] = []
    try:
        for metric in metrics:
            slot = tower_slot(metric)
            if slot is None:
                continue
            owner, attr = slot
            tower = getattr(owner, attr)
            if isinstance(tower, SharedTower):  # already wrapped by an outer engine
                by_metric[id(metric)] = tower
                continue
            proxy = next((p for p in proxies if p.tower is tower or (share and same_tower(p.tower, tower))), None)
            if proxy is None:
                proxy = SharedTower(tower, autocast=autocast, compile=compile, cache=cache)
                proxies.append(proxy)
            restore.append((owner, attr, tower))
            setattr(owner, attr, proxy)
            by_metric[id(metric)] = proxy
        yield by_metric
    finally:
        for owner, attr, tower in reversed(restore):
            setattr(owner, attr, tower)


def content_sha256(item) -> str | None:
    """SHA-256 of an input's content: a file's bytes, encoded bytes, or a PIL image / array's pixels
    (with mode and size). None when the item cannot be read (its decode then reports why)."""
    import os

    from PIL import Image

    h = hashlib.sha256()
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return None
    elif isinstance(item, (bytes, bytearray, memoryview)):
        h.update(bytes(item))
    elif isinstance(item, Image.Image):
        h.update(f"pil:{item.mode}:{item.size}".encode())
        h.update(item.tobytes())
    elif isinstance(item, np.ndarray):
        h.update(f"array:{item.dtype}:{item.shape}".encode())
        h.update(np.ascontiguousarray(item).tobytes())
    else:
        return None
    return h.hexdigest()
