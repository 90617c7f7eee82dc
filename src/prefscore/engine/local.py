"""The local scoring engine: parallel decode, shared preprocessing and encoding, batched forward.

Pipeline, for any number of metrics at once:

1. **Decode + preprocess in worker threads** (Pillow and numpy release the GIL), at most
   ``prefetch`` batches ahead of the forward pass, so memory stays bounded whatever N is and
   decoding overlaps with the model. Each image is decoded once for all metrics; metrics whose
   ``preprocess_key()`` is equal get the same tensor (computed once). When a batch is due and
   some of its images have not been started yet, the calling thread decodes them itself (work
   stealing) instead of waiting. When every model runs on the CPU, the workers run at idle CPU
   priority (Linux ``SCHED_IDLE``): they use the cycles the forward pass leaves free and never
   preempt its threads (oversubscribed cores slow a multi-threaded forward more than decoding
   costs); the stealing caller decodes at normal priority, and an image a starved worker holds
   for longer than a few typical decode times is decoded by the caller too, so a machine whose
   cores are all busy slows the job down but cannot stall it.
2. **Forward**, one batch at a time in input order: tensors of one preprocessing are stacked per
   shape (full-resolution metrics see mixed sizes; nothing is padded or resized beyond the
   reference pipeline), pinned and copied ``non_blocking`` on CUDA, and passed to each metric.
   Towers are shared through :mod:`prefscore.engine.shared` (one encoding per batch for identical
   weights), optionally under autocast / ``torch.compile`` and through the feature cache.
3. Results come back per batch (:class:`BatchResult`), so callers can stream them to disk: an
   interruption loses at most the batch in flight.

Metrics that read their own inputs (``decodes_inputs``) or batch on their own (an overridden
``_score_items``, e.g. Q-Align, composites) are run per batch through ``score_records``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..base import Metric
from ..errors import ImageError
from ..images import describe, load_image
from .shared import SharedTower, autocast_dtype, content_sha256, shared_towers

#: stands in for the pixels of an image whose features are all in the feature cache (never decoded)
_CACHED = torch.empty(0)


@dataclass
class EngineOptions:
    """How the engine runs. The defaults reproduce the reference numbers exactly (fp32, no cache).

    ``batch_size``: images per forward (None: the smallest ``default_batch_size`` of the metrics).
    ``workers``: decode threads (None: ``min(8, cpu_count)``; 0: decode in the calling thread).
    ``idle_priority``: run the decode threads at idle CPU priority (None: when every model is on
    the CPU, where they compete with the forward pass for cores; Linux only, elsewhere ignored).
    ``prefetch``: batches decoded ahead of the forward pass (bounds memory to about
    ``(prefetch + 1) * batch_size`` decoded images). ``autocast``: None/"fp32" (parity default),
    "bf16" or "fp16" for the image towers (heads stay fp32). ``compile``: ``torch.compile`` the
    image towers. ``share``: one encoding per batch for metrics with identical towers and
    preprocessing. ``cache``: folder of the on-disk feature cache (None: off). ``pin_memory``:
    page-locked host batches for CUDA devices.
    """

    batch_size: int | None = None
    workers: int | None = None
    prefetch: int = 2
    autocast: str | None = None
    compile: bool = False
    share: bool = True
    cache: str | Path | None = None
    pin_memory: bool = True
    idle_priority: bool | None = None

    def __post_init__(self) -> None:
        autocast_dtype(self.autocast)  # validate early
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")

    def resolved_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.workers is None else self.workers


@dataclass
class BatchResult:
    """Scores of one batch: ``indices`` into the input, ``scores[name]`` of shape ``(B, k)`` (NaN
    where the item failed) and ``errors[j]``, the ``(metric name or None, reason)`` failures of the
    batch's ``j``-th item (None: the image itself could not be read, for every metric)."""

    indices: list[int]
    names: list[str]
    scores: dict[str, np.ndarray]
    errors: dict[int, list[tuple[str | None, str]]] = field(default_factory=dict)


class _Unit:
    """Metrics fed by one preprocessed tensor per image (equal preprocess keys, device and dtype)."""

    def __init__(self, key: Hashable | None, first: Metric):
        self.key = key
        self.preprocess = first.preprocess
        self.device = first.device
        self.dtype = first.dtype
        self.members: list[tuple[str, Metric]] = []
        self.proxies: list[SharedTower] = []

    def fully_cached(self, sha: str | None) -> bool:
        """Every metric of the unit gets its pixels only through a cached tower that has this image."""
        if sha is None or self.key is None or len(self.proxies) == 0:
            return False
        return all(p.has_cached(self.key, sha) for p in self.proxies)


@dataclass
class _Prepared:
    index: int
    name: str
    sha: str | None = None
    image: object = None
    tensors: dict[int, torch.Tensor] = field(default_factory=dict)
    unit_errors: dict[int, str] = field(default_factory=dict)
    error: str | None = None


def _idle_priority() -> None:
    """Thread initializer: this thread runs only on CPU time nothing else wants (Linux SCHED_IDLE)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0 = the calling thread on Linux
    except (AttributeError, OSError):  # not Linux, or refused: normal priority
        pass


def _own_batching(metric: Metric) -> bool:
    return metric.decodes_inputs or type(metric)._score_items is not Metric._score_items


class Engine:
    """Scores items with several metrics (``name -> Metric``) in one pass; see the module docstring.

    >>> engine = Engine({"aesthetic": prefscore.load("laion-aesthetic"),
    ...                  "v1": prefscore.load("laion-aesthetic-v1")}, EngineOptions(workers=4))
    >>> for batch in engine.run(paths):
    ...     batch.scores["aesthetic"]          # (B, 1)
    """

    def __init__(self, metrics: Mapping[str, Metric], options: EngineOptions | None = None):
        if not metrics:
            raise ValueError("the engine needs at least one metric")
        self.metrics = dict(metrics)
        self.options = options or EngineOptions()
        self.batch_size = self.options.batch_size or min(m.default_batch_size for m in self.metrics.values())
        self.cache = None
        if self.options.cache is not None:
            from .cache import FeatureCache

            self.cache = FeatureCache(self.options.cache)
        self.units: list[_Unit] = []
        self.own: list[tuple[str, Metric]] = []
        for name, metric in self.metrics.items():
            if _own_batching(metric):
                self.own.append((name, metric))
                continue
            key = metric.preprocess_key() if self.options.share else None
            unit = None
            if key is not None:
                unit = next((u for u in self.units if u.key == key and u.device == metric.device and u.dtype == metric.dtype), None)
            if unit is None:
                unit = _Unit(key, metric)
                self.units.append(unit)
            unit.members.append((name, metric))
        self.needs_image = bool(self.units) or any(not m.decodes_inputs for _, m in self.own)
        self.proxies: dict[int, SharedTower] = {}

    # -- public --------------------------------------------------------------------------------
    def run(self, items: Sequence, prompts: Sequence[str] | None = None) -> Iterator[BatchResult]:
        """Yield one :class:`BatchResult` per batch, in input order. ``prompts``: aligned with
        ``items`` (required when a metric needs prompts). Stopping the iteration (or Ctrl-C) stops
        the decode workers; results of finished batches were already yielded."""
        items = list(items)
        if prompts is not None and len(prompts) != len(items):
            raise ValueError(f"got {len(prompts)} prompts for {len(items)} items")
        for name, metric in self.metrics.items():
            if metric.needs_prompt and prompts is None:
                raise ValueError(f"metric '{name}' needs a prompt per item")
        with self._towers():
            workers = self.options.resolved_workers()
            idle = self.options.idle_priority
            if idle is None:
                idle = all(m.device.type == "cpu" for m in self.metrics.values())
            pool = ThreadPoolExecutor(workers, thread_name_prefix="prefscore-decode",
                                      initializer=_idle_priority if idle else None) if workers > 0 else None
            try:
                yield from self._batches(items, prompts, pool, idle)
            finally:
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)

    def score(self, items: Sequence, prompts: Sequence[str] | None = None,
              progress: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], list[tuple[int, str | None, str]]]:
        """All at once: ``({name: (N, k) scores}, [(index, metric or None, reason)])``."""
        n = len(items)
        out = {name: np.full((n, len(m.output_names)), math.nan) for name, m in self.metrics.items()}
        errors: list[tuple[int, str | None, str]] = []
        for batch in self.run(items, prompts):
            for name, values in batch.scores.items():
                out[name][batch.indices] = values
            for j, errs in sorted(batch.errors.items()):
                errors.extend((batch.indices[j], m, why) for m, why in errs)
            if progress is not None:
                progress(len(batch.indices))
        return out, errors

    # -- internals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _towers(self):
        tensor_metrics = [m for u in self.units for _, m in u.members]
        o = self.options
        with shared_towers(tensor_metrics, share=o.share, autocast=o.autocast, compile=o.compile, cache=self.cache) as proxies:
            self.proxies = proxies
            for unit in self.units:
                unit.proxies = []
                for _, metric in unit.members:
                    proxy = proxies.get(id(metric))
                    if proxy is None:  # a metric without a declared tower: its pixels are always needed
                        unit.proxies = []
                        break
                    if all(proxy is not p for p in unit.proxies):
                        unit.proxies.append(proxy)
            try:
                yield
            finally:
                self.proxies = {}
                for unit in self.units:
                    unit.proxies = []

    def _batches(self, items, prompts, pool, idle: bool) -> Iterator[BatchResult]:
        n, bs = len(items), self.batch_size
        starts = deque(range(0, n, bs))
        pending: deque[tuple[int, list]] = deque()
        took: deque[float] = deque(maxlen=32)  # seconds per image decoded here (normal priority)

        def steal(i: int) -> _Prepared:
            t = time.perf_counter()
            p = self._prepare(i, items[i])
            took.append(time.perf_counter() - t)
            return p

        def collect(i: int, f):
            """A worker's image. An idle-priority worker on a machine whose cores are all busy may be
            starved: after a few typical decode times the image is decoded here too (same bytes, same
            pixels) and the worker's copy is dropped when it comes."""
            if not isinstance(f, Future):
                return f
            if not idle:
                return f.result()
            typical = sorted(took)[len(took) // 2] if took else 0.025
            try:
                return f.result(timeout=max(0.02, 4 * typical))
            except FutureTimeout:
                return f.result() if f.done() else steal(i)

        def submit() -> None:
            start = starts.popleft()
            idx = range(start, min(start + bs, n))
            if pool is None:
                pending.append((start, [self._prepare(i, items[i]) for i in idx]))
            else:
                pending.append((start, [pool.submit(self._prepare, i, items[i]) for i in idx]))

        while starts or pending:
            while starts and len(pending) <= (self.options.prefetch if pool is not None else 0):
                submit()
            start, futures = pending.popleft()
            # work stealing: the images of this batch no worker has started are decoded here, last first
            # (the workers take them from the front), rather than waited for
            for k in reversed(range(len(futures))):
                f = futures[k]
                if isinstance(f, Future) and f.cancel():
                    futures[k] = steal(start + k)
            prepared = [collect(start + k, f) for k, f in enumerate(futures)]
            yield self._forward(prepared, items, prompts)

    def _prepare(self, i: int, item) -> _Prepared:
        p = _Prepared(i, describe(item, i))
        if self.cache is not None:
            p.sha = content_sha256(item)
            skip = [u for u in self.units if u.fully_cached(p.sha)]
            for u in skip:
                p.tensors[id(u)] = _CACHED
            if len(skip) == len(self.units) and not any(not m.decodes_inputs for _, m in self.own):
                return p
        if not self.needs_image:
            return p
        try:
            image = load_image(item, p.name)
        except ImageError as exc:
            p.error = exc.reason
            return p
        if any(not m.decodes_inputs for _, m in self.own):
            p.image = image
        for u in self.units:
            if id(u) in p.tensors:
                continue
            try:
                p.tensors[id(u)] = u.preprocess(image, p.name)
            except ImageError as exc:
                p.unit_errors[id(u)] = exc.reason
        return p

    @torch.inference_mode()
    def _forward(self, prepared: list[_Prepared], items, prompts) -> BatchResult:
        indices = [p.index for p in prepared]
        result = BatchResult(indices, list(self.metrics), {
            name: np.full((len(prepared), len(m.output_names)), math.nan) for name, m in self.metrics.items()
        })
        for j, p in enumerate(prepared):
            if p.error is not None:
                result.errors[j] = [(None, p.error)]
        for unit in self.units:
            for j, p in enumerate(prepared):
                if id(unit) in p.unit_errors:
                    for name, _ in unit.members:
                        result.errors.setdefault(j, []).append((name, p.unit_errors[id(unit)]))
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for j, p in enumerate(prepared):
                t = p.tensors.get(id(unit))
                if t is not None:
                    by_shape.setdefault(tuple(t.shape), []).append(j)
            for js in by_shape.values():
                self._forward_unit(unit, [prepared[j] for j in js], js, result, prompts)
        for name, metric in self.own:
            js = [j for j, p in enumerate(prepared) if p.error is None or metric.decodes_inputs]
            if not js:
                continue
            inputs = [items[prepared[j].index] if metric.decodes_inputs else prepared[j].image for j in js]
            batch_prompts = [prompts[prepared[j].index] for j in js] if metric.needs_prompt else None
            values, errors = metric.score_records(inputs, batch_prompts, batch_size=len(js))
            result.scores[name][js] = values
            for k, _, reason in errors:
                result.errors.setdefault(js[k], []).append((name, reason))
        return result

    def _forward_unit(self, unit: _Unit, batch: list[_Prepared], js: list[int], result: BatchResult, prompts) -> None:
        pixels = torch.stack([p.tensors[id(unit)] for p in batch])
        if unit.device.type == "cuda" and self.options.pin_memory:
            pixels = pixels.pin_memory()
        pixels = pixels.to(unit.device, unit.dtype, non_blocking=True)
        shas = [p.sha for p in batch] if self.cache is not None else None
        proxies = {id(px): px for _, m in unit.members if (px := self.proxies.get(id(m))) is not None}
        for proxy in proxies.values():
            proxy.begin(pixels, shas, unit.key)
        try:
            for name, metric in unit.members:
                batch_prompts = [prompts[p.index] for p in batch] if metric.needs_prompt else None
                ctx = contextlib.nullcontext()
                cast = autocast_dtype(self.options.autocast)
                if cast is not None and id(metric) not in self.proxies:  # no declared tower: autocast the whole forward
                    ctx = torch.autocast(unit.device.type, dtype=cast)
                with ctx:
                    values = metric.forward(pixels, batch_prompts)
                result.scores[name][js] = values.float().cpu().numpy().reshape(len(batch), -1)
        finally:
            for proxy in proxies.values():
                proxy.end()


def score_metric(metric: Metric, items: Sequence, prompts: Sequence[str] | None, batch_size: int,
                 on_batch: Callable[[int], None] | None = None, options: EngineOptions | None = None) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
    """One metric through the engine (what :meth:`Metric.score` uses): ``((N, k) scores, errors)``
    with errors as ``(index, source name, reason)``."""
    opts = options or EngineOptions()
    opts = EngineOptions(**{**opts.__dict__, "batch_size": batch_size})
    engine = Engine({metric.name: metric}, opts)
    n = len(items)
    out = np.full((n, len(metric.output_names)), math.nan)
    errors: list[tuple[int, str, str]] = []
    for batch in engine.run(items, prompts):
        out[batch.indices] = batch.scores[metric.name]
        for j, errs in sorted(batch.errors.items()):
            i = batch.indices[j]
            errors.extend((i, describe(items[i], i), why) for _, why in errs)
        if on_batch is not None:
            on_batch(len(batch.indices))
    return out, errors
