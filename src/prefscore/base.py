"""The metric interface every scorer implements, with batching, prompt handling and error capture."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from . import differentiable, preprocess
from .errors import PromptError, PromptTruncationWarning, ScoringError
from .images import IMAGE_SUFFIXES, ImageInput

if TYPE_CHECKING:
    from .registry import MetricSpec

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}") from None


def align_prompts(prompts: str | Sequence[str] | None, n: int, metric: str, required: bool) -> list[str] | None:
    """One prompt for all images, or a list aligned with them; a clear error otherwise."""
    if prompts is None:
        if required:
            raise PromptError(f"metric '{metric}' scores an image against a prompt: pass prompts= (one string or one per image)")
        return None
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise PromptError(f"got {len(prompts)} prompts for {n} images: pass one string, or one prompt per image")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(f"prompt #{i} is {type(p).__name__}, not a string (missing prompt?)")
    return prompts


def check_options(metric: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Raise ``TypeError`` naming the options of ``given`` that ``metric`` does not have, and the ones it has."""
    known = set(known)
    unknown = set(given) - known
    if unknown:
        raise TypeError(f"metric '{metric}' has no option(s) {', '.join(sorted(unknown))}; "
                        f"its options: {', '.join(sorted(known)) or 'none'}")


class HFProcessorInput:
    """Mixin for metrics whose images go through a transformers 4.x image processor (``self.processor``, a
    :class:`prefscore.preprocess.HFProcessorConfig`: CLIP or SigLIP settings), exactly and differentiably."""

    processor: "preprocess.HFProcessorConfig"

    def preprocess(self, image, name):
        return preprocess.hf_clip(image, self.processor, name=name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        return differentiable.hf_clip_tensor(pixels, self.processor, quantize=quantize)

    def preprocess_key(self):
        return ("hf_clip", self.processor)


class Metric:
    """A loaded scorer. Subclasses implement :meth:`preprocess` and :meth:`forward`.

    ``score`` returns a float64 array of shape ``(N,)``, or ``(N, k)`` when the metric has several
    outputs (``output_names``). Units, range and direction are in ``spec``.
    """

    spec: "MetricSpec"
    output_names: tuple[str, ...] = ("score",)
    default_batch_size: int = 16
    #: True when the metric reads its own inputs (e.g. Q-Align's video task reads video files): engines
    #: then hand it the raw items instead of decoded images.
    decodes_inputs: bool = False
    #: File suffixes a folder scan should pick up for this metric.
    input_suffixes: frozenset[str] = IMAGE_SUFFIXES

    def __init__(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32"):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- to implement ---------------------------------------------------------------------------
    def preprocess(self, image, name: str) -> torch.Tensor:
        """One decoded PIL image (stored mode) -> model input tensor, exactly as the reference."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Preprocessed batch (+ aligned prompts) -> scores ``(B,)`` or ``(B, k)``."""
        raise NotImplementedError

    def preference_temperature(self) -> float:
        """tau in ``softmax(score / tau)`` used by :meth:`compare` (the metric's training temperature)."""
        raise NotImplementedError(f"metric '{self.spec.name}' has no preference form")

    # -- public API -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_prompt(self) -> bool:
        return self.spec.inputs == "image+prompt"

    def __repr__(self) -> str:
        return f"<prefscore metric {self.spec.name!r} on {self.device} ({str(self.dtype).replace('torch.', '')})>"

    def score(
        self,
        images: ImageInput | Iterable[ImageInput],
        prompts: str | Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
        progress: bool | Callable[[int], None] = False,
    ) -> np.ndarray:
        """Score images (paths, bytes, PIL images or HxWxC uint8 arrays).

        ``prompts``: one string for all images or a list aligned with them (prompt-aware metrics
        only). Images that cannot be read never stop the others: with ``on_error="raise"`` (default)
        every other image is scored and then :class:`ScoringError` is raised, carrying all scores
        (NaN for the failures) and the reasons; ``on_error="nan"`` returns the array with NaN rows.
        ``progress``: True for a progress bar, or a callable receiving the number of items done.
        """
        if on_error not in ("raise", "nan"):
            raise ValueError("on_error must be 'raise' or 'nan'")
        single = isinstance(images, (str, bytes)) or not isinstance(images, Iterable) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8
        )
        items = [images] if single else list(images)
        aligned = align_prompts(prompts, len(items), self.spec.name, self.needs_prompt) if self.needs_prompt else None
        if not self.needs_prompt and prompts is not None:
            raise PromptError(f"metric '{self.spec.name}' scores images alone; it takes no prompt")
        out, errors = self._score_items(items, aligned, batch_size or self.default_batch_size, progress)
        if aligned:
            self.warn_truncated(aligned, stacklevel=3)
        if errors and on_error == "raise":
            raise ScoringError(self._shape(out, single), errors)
        return self._shape(out, single)

    def _shape(self, out: np.ndarray, single: bool) -> np.ndarray:
        out = out[:, 0] if len(self.output_names) == 1 else out
        return out[0] if single else out

    def score_records(self, items: Sequence[ImageInput], prompts: Sequence[str] | None, batch_size: int | None = None,
                      progress: bool | Callable[[int], None] = False) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Like :meth:`score`, returning ``(scores (N, k), errors)`` with no exception: for engines."""
        return self._score_items(list(items), list(prompts) if prompts is not None else None,
                                 batch_size or self.default_batch_size, progress)

    def score_tensor(self, pixels: torch.Tensor, prompts: str | Sequence[str] | None = None, **options) -> torch.Tensor:
        """Differentiable scores of a float RGB batch ``pixels`` ``(B, 3, H, W)`` with values in [0, 1].

        The metric's preprocessing runs in torch (its ``preprocess_tensor`` hook, built on
        :mod:`prefscore.differentiable`), then :meth:`forward`, so gradients reach ``pixels``; no
        inference mode. Returns ``(B,)`` (or ``(B, k)``) in the metric's units on its device.
        ``options`` go to the hook (``quantize=False``: no 8-bit rounding; see that module). The
        measured gap to :meth:`score` is in docs/generation.md.
        """
        hook = getattr(self, "preprocess_tensor", None)
        if hook is None:
            raise NotImplementedError(f"metric '{self.spec.name}' has no differentiable preprocessing (score_tensor)")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4:
            raise ValueError(f"pixels must be a tensor (B, 3, H, W) in [0, 1], got {getattr(pixels, 'shape', type(pixels))}")
        aligned = align_prompts(prompts, len(pixels), self.spec.name, True) if self.needs_prompt else None
        if not self.needs_prompt and prompts is not None:
            raise PromptError(f"metric '{self.spec.name}' scores images alone; it takes no prompt")
        for p in set(aligned or ()):  # text features cached by score() are inference tensors: autograd cannot save them
            cached = self._text_cache.get(p)
            if cached is not None and cached.is_inference() and not torch.is_inference_mode_enabled():
                self._text_cache[p] = cached.clone()
        inputs = hook(pixels.to(self.device), **options).to(self.dtype).contiguous()  # score()'s layout: same kernels
        out = self.forward(inputs, aligned)
        return out[:, 0] if out.dim() == 2 and len(self.output_names) == 1 else out

    @torch.inference_mode()
    def compare(self, images: Sequence[ImageInput], prompt: str, *, temperature: float | None = None) -> np.ndarray:
        """Probability that people prefer each candidate for ``prompt``: ``softmax(s(p, x_i) / tau)``.

        This is the Bradley-Terry preference ``sigmoid(r_a - r_b)`` generalised to k candidates,
        with tau the temperature the metric was trained with (``preference_temperature()``), or
        ``temperature`` if given. For PickScore it is exactly its published probability.
        """
        if not self.needs_prompt:
            raise PromptError(f"metric '{self.spec.name}' does not take a prompt; compare() needs a prompt-aware metric")
        if not isinstance(prompt, str):
            raise PromptError("compare() takes one prompt (a string) shared by all candidate images")
        scores = np.asarray(self.score(list(images), prompt), dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(f"metric '{self.spec.name}' has several outputs; compare() needs one score per image")
        tau = self.preference_temperature() if temperature is None else float(temperature)
        logits = scores / tau
        logits -= logits.max()
        p = np.exp(logits)
        return p / p.sum()

    # -- batching ------------------------------------------------------------------------------
    def _score_items(self, items, prompts, batch_size, progress):
        """Batches through the local engine: images decoded and preprocessed in worker threads ahead
        of the forward pass, one forward per input shape (full-resolution metrics see mixed sizes)."""
        from .engine.local import score_metric

        bar = _Progress(progress, len(items), self.spec.name)
        try:
            return score_metric(self, items, prompts, batch_size, on_batch=bar.advance)
        finally:
            bar.close()

    # -- optional hooks for engines scoring several metrics at once ------------------------------
    def preprocess_key(self):
        """Hashable identity of :meth:`preprocess` (pipeline and settings), or None (default).

        Metrics returning equal keys turn every image into the same tensor, so an engine scoring
        them together preprocesses each image once and may share their image encoding.
        """
        return None

    def image_tower(self) -> tuple[object, str] | None:
        """``(owner, attribute)`` of the module whose ``image_features(pixels)`` is the only use
        :meth:`forward` makes of ``pixels``, or None (default). Engines then encode a batch once for
        all metrics whose towers hold identical weights, and may cache these features on disk."""
        return None

    def note_truncation(self, prompts: Sequence[str], count_tokens: Callable[[list[str]], list[int]], limit: int) -> None:
        """Record which of ``prompts`` the tokenizer cuts: ``count_tokens`` gives their untruncated
        lengths (special tokens included), ``limit`` the tokens the model takes. Prompts seen before are
        not counted again."""
        seen = self.__dict__.setdefault("_truncated", {})
        self._token_limit = limit
        new = [p for p in dict.fromkeys(prompts) if p not in seen]
        if new:
            for p, n in zip(new, count_tokens(new)):
                seen[p] = n > limit

    def truncated_prompts(self, prompts: Iterable[str]) -> list[str]:
        """The distinct prompts among ``prompts`` that this metric's tokenizer cut (once encoded)."""
        seen = self.__dict__.get("_truncated", {})
        return [p for p in dict.fromkeys(prompts) if seen.get(p)]

    def warn_truncated(self, prompts: Iterable[str], stacklevel: int = 2) -> str | None:
        """One :class:`PromptTruncationWarning` for a run: how many of its distinct prompts were cut.
        Returns the message (None when nothing was cut)."""
        cut = self.truncated_prompts(prompts)
        if not cut:
            return None
        limit = getattr(self, "_token_limit", None)
        message = (f"{self.name}: {len(cut)} prompt(s) longer than the model's {limit} tokens were truncated, as the "
                   f"reference implementation does (e.g. {cut[0][:60]!r}{'...' if len(cut[0]) > 60 else ''})")
        warnings.warn(message, PromptTruncationWarning, stacklevel=stacklevel)
        return message

    def cached_text_features(self, prompts: list[str], encode: Callable[[list[str]], torch.Tensor], maxsize: int = 4096) -> torch.Tensor:
        """Features of each prompt, encoding each distinct prompt once (LRU cache across calls)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if todo:
            feats = encode(todo)
            for p, f in zip(todo, feats):
                self._text_cache[p] = f
        for p in prompts:
            self._text_cache.move_to_end(p)
        result = torch.stack([self._text_cache[p] for p in prompts])
        while len(self._text_cache) > maxsize:
            self._text_cache.popitem(last=False)
        return result


class _Progress:
    """A rich progress bar (or a user callback) that costs nothing when disabled."""

    def __init__(self, progress, total: int, label: str):
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.done = 0
        if progress is True:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.advance(self.task, count)
        if self.callback is not None:
            self.callback(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
