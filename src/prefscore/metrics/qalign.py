"""Q-Align / OneAlign: an LMM's probabilities of five level words turned into a score.

Recipe (``Q-Future/Q-Align:q_align/evaluate/scorer.py``): prompt the model with the task's
question and the start of its answer ("... The quality of the image is"), take the next-token
logits of the level words ``excellent, good, fair, poor, bad`` (the first token of each word),
softmax over those five only, and return ``probabilities . weights``. Weights ``[5, 4, 3, 2, 1]``
give a score in [1, 5] (the HF ``model.score()``, pyiqa, DeQA-Score; the default here);
``scale="0-1"`` uses scorer.py's ``[1, 0.75, 0.5, 0.25, 0]``, so ``s_15 = 1 + 4 * s_01``.

Images are padded to a square with the processor's mean colour (in their own mode, as the
official ``expand2square``) and resized by its settings (448 px for the official checkpoints).
Videos (``task="video-quality"``) are read with PyAV at one frame per second (indices
``int(fps * i)``), every frame padded and all frames of a video put under the single image token
of its prompt. Model backends (the official mPLUG-Owl2 checkpoints run natively, or
transformers-native LLaVA / Qwen2-VL) are in :mod:`prefscore.metrics.qalign_backends`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..base import Metric, _Progress, check_options
from ..errors import ImageError, ScoringError
from ..images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, ImageInput, describe, load_image
from .qalign_backends import QAlignBackendError, make_backend
from .qalign_video import read_video_frames

LEVELS = ("excellent", "good", "fair", "poor", "bad")
SCALES: dict[str, tuple[float, ...]] = {"1-5": (5.0, 4.0, 3.0, 2.0, 1.0), "0-1": (1.0, 0.75, 0.5, 0.25, 0.0)}


@dataclass(frozen=True)
class Task:
    """The official prompt of a task: ``USER: {question}\\n<|image|>\\nASSISTANT: {answer_prefix}``."""

    question: str
    answer_prefix: str
    video: bool = False


TASKS: dict[str, Task] = {
    "quality": Task("How would you rate the quality of this image?", "The quality of the image is"),
    "aesthetics": Task("How would you rate the aesthetics of this image?", "The aesthetics of the image is"),
    "video-quality": Task("How would you rate the quality of this video?", "The quality of the video is", video=True),
}
TASK_ALIASES = {"aesthetic": "aesthetics", "video": "video-quality", "video_quality": "video-quality", "iqa": "quality",
                "iaa": "aesthetics", "vqa": "video-quality"}


@dataclass(frozen=True)
class QAlignOptions:
    """Keyword options of the ``q-align`` metric (``prefscore.load("q-align", **options)``).

    ``task``: ``"quality"`` (default), ``"aesthetics"`` or ``"video-quality"``.
    ``scale``: ``"1-5"`` (weights 5..1, default) or ``"0-1"`` (scorer.py's 1..0 in quarters).
    ``levels`` / ``weights``: other level words (best first) and their weights; the words' first
    tokens must differ. ``weights`` overrides ``scale``; it is required when ``levels`` does not
    have five words.
    ``question`` / ``answer_prefix``: replace the task's prompt text.
    ``pad_to_square``: pad with the mean colour before resizing (True; the official recipe).
    ``device_map``: where the weights go instead of ``device``. Official (mPLUG-Owl2) checkpoints:
    ``"auto"`` splits the LLM layers over the visible GPUs, or a dict from module names (the
    checkpoint's, e.g. ``"model.layers.16"``; ``""`` for the rest) to devices. Native models: passed
    to ``from_pretrained`` (needs ``accelerate``). ``model_kwargs``: any other ``from_pretrained``
    keyword for native models (``attn_implementation``, ``quantization_config``, ...); refused
    for the official checkpoints, which are not loaded through transformers.
    """

    task: str = "quality"
    scale: str = "1-5"
    levels: tuple[str, ...] = LEVELS
    weights: tuple[float, ...] | None = None
    question: str | None = None
    answer_prefix: str | None = None
    pad_to_square: bool = True
    device_map: Any = None
    model_kwargs: dict | None = None

    @classmethod
    def from_kwargs(cls, **options) -> "QAlignOptions":
        check_options("q-align", options, (f.name for f in dataclasses.fields(cls)))
        opts = cls(**options)
        task = TASK_ALIASES.get(str(opts.task).lower(), str(opts.task).lower())
        if task not in TASKS:
            raise ValueError(f"unknown q-align task {opts.task!r}; tasks: {', '.join(TASKS)}")
        if opts.scale not in SCALES:
            raise ValueError(f"unknown q-align scale {opts.scale!r}; use '1-5' (weights 5..1) or '0-1' (weights 1..0)")
        words_ok = all(isinstance(w, str) and w.strip() for w in opts.levels)
        if isinstance(opts.levels, str) or not words_ok or len(opts.levels) < 2:
            raise ValueError(f"levels must be a sequence of at least two non-empty words, not {opts.levels!r}")
        levels = tuple(opts.levels)
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct words, got {levels!r}")
        if opts.weights is not None:
            weights = tuple(float(w) for w in opts.weights)
            if len(weights) != len(levels) or not all(math.isfinite(w) for w in weights):
                raise ValueError(f"weights must be {len(levels)} finite numbers (one per level word), got {opts.weights!r}")
        elif len(levels) == len(SCALES[opts.scale]):
            weights = SCALES[opts.scale]
        else:
            raise ValueError(f"{len(levels)} level words need explicit weights= (the scales have five)")
        for name in ("question", "answer_prefix"):
            value = getattr(opts, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, not {type(value).__name__}")
        return dataclasses.replace(opts, task=task, levels=levels, weights=weights)


class QAlign(Metric):
    """Q-Align level-probability score of images (or videos with ``task="video-quality"``).

    ``score(images)`` returns ``(N,)`` floats in [1, 5] by default ([0, 1] with ``scale="0-1"``,
    ``[min(weights), max(weights)]`` with custom weights); higher is better.
    :meth:`level_probabilities` returns the ``(N, L)`` softmax over the level words.
    Items: image paths/bytes/PIL/arrays; for the video task, video paths or bytes (PyAV), or a
    list of frames (used as given, no sampling). The model weights load on first use.
    """

    output_names = ("score",)
    default_batch_size = 8

    def __init__(self, spec, source: str, device="cpu", dtype="float32", **options):
        super().__init__(device, dtype)
        self.options = QAlignOptions.from_kwargs(**options)
        task = TASKS[self.options.task]
        self.task = self.options.task
        self.video = task.video
        self.decodes_inputs = self.video  # videos are read by the metric itself (PyAV), not as images
        self.input_suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES if self.video else IMAGE_SUFFIXES
        self.levels = self.options.levels
        self.weights = np.asarray(self.options.weights, dtype=np.float64)
        low, high = float(self.weights.min()), float(self.weights.max())
        self.spec = spec if (low, high) == tuple(spec.output_range) else dataclasses.replace(
            spec, output_range=(low, high), typical=f"{low:g}-{high:g} (weights {', '.join(f'{w:g}' for w in self.weights)})")
        self.question = self.options.question if self.options.question is not None else task.question
        self.answer_prefix = self.options.answer_prefix if self.options.answer_prefix is not None else task.answer_prefix
        self.backend = make_backend(str(source), self.question, self.answer_prefix, self.levels, self.device, self.dtype,
                                    device_map=self.options.device_map, model_kwargs=self.options.model_kwargs,
                                    pad_to_square=self.options.pad_to_square)

    def __repr__(self) -> str:
        return (f"<prefscore metric 'q-align' task={self.task!r} ({type(self.backend).__name__}) on {self.device} "
                f"({str(self.dtype).replace('torch.', '')})>")

    def load_model(self):
        """Load the weights now (they otherwise load on the first call) and return the model."""
        return self.backend.load()

    @property
    def level_token_ids(self) -> list[int]:
        """Token id scored for each level word (its first token; see docs/q-align.md)."""
        return list(self.backend.level_ids)

    # -- inputs --------------------------------------------------------------------------------
    def frames(self, item, name: str) -> list:
        """The frames of one item: one for an image (in its stored mode); the 1-fps RGB frames of a video file.

        In the video task an image (a path with an image suffix, a PIL image, an ``HxWxC`` array)
        is a one-frame video and a list of images (or a ``TxHxWxC`` array) is a video's frames,
        used as given.
        """
        if self.video:
            is_image_path = (isinstance(item, (str, os.PathLike))
                             and os.path.splitext(os.fspath(item))[1].lower() in IMAGE_SUFFIXES)
            if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)) and not is_image_path:
                return read_video_frames(item, name)
            if isinstance(item, np.ndarray) and item.ndim == 4:
                item = list(item)
            if isinstance(item, (list, tuple)):
                if not item:
                    raise ImageError(name, "empty list of frames")
                return [load_image(frame, f"{name}[frame {j}]") for j, frame in enumerate(item)]
            return [load_image(item, name)]
        if isinstance(item, (list, tuple)):
            raise ImageError(name, "a list of frames is a video: use task='video-quality'")
        return [load_image(item, name)]

    # -- scoring -------------------------------------------------------------------------------
    def _score_items(self, items, prompts, batch_size, progress):
        probs, errors = self._probabilities(items, batch_size, progress)
        return (probs @ self.weights)[:, None], errors

    @torch.inference_mode()
    def _probabilities(self, items: list, batch_size: int, progress) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        n = len(items)
        out = np.full((n, len(self.levels)), math.nan, dtype=np.float64)
        errors: list[tuple[int, str, str]] = []
        bar = _Progress(progress, n, self.spec.name)
        try:
            for start in range(0, n, batch_size):
                idx, samples = [], []
                for i in range(start, min(start + batch_size, n)):
                    name = describe(items[i], i)
                    try:
                        samples.append(self.backend.prepare(self.frames(items[i], name), name))
                        idx.append(i)
                    except ImageError as exc:
                        errors.append((i, exc.source, exc.reason))
                if samples:
                    logits = self.backend.level_logits(samples, video=self.video)
                    out[idx] = torch.softmax(logits.double(), dim=-1).numpy()
                bar.advance(min(start + batch_size, n) - start)
        finally:
            bar.close()
        return out, errors

    @torch.inference_mode()
    def level_probabilities(self, images: ImageInput | Iterable[ImageInput], *, batch_size: int | None = None,
                            on_error: str = "raise", progress: bool | Callable[[int], None] = False) -> np.ndarray:
        """Softmax over the level words, ``(N, L)`` in ``levels`` order (``(L,)`` for one item).

        Failed items are NaN rows; errors behave as in :meth:`score`.
        """
        if on_error not in ("raise", "nan"):
            raise ValueError("on_error must be 'raise' or 'nan'")
        single = isinstance(images, (str, bytes)) or not isinstance(images, Iterable) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8
        )
        items = [images] if single else list(images)
        probs, errors = self._probabilities(items, batch_size or self.default_batch_size, progress)
        result = probs[0] if single else probs
        if errors and on_error == "raise":
            raise ScoringError(result, errors)
        return result


__all__ = ["LEVELS", "QAlign", "QAlignBackendError", "QAlignOptions", "SCALES", "TASKS", "Task"]
