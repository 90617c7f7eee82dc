"""The metric interface every scorer implements, with batching, prompt handling and error capture."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import ImageError, PromptError, ScoringError
from .images import IMAGE_SUFFIXES, ImageInput, describe, load_image

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
    @torch.inference_mode()
    def _score_items(self, items, prompts, batch_size, progress):
        n, k = len(items), len(self.output_names)
        out = np.full((n, k), math.nan, dtype=np.float64)
        errors: list[tuple[int, str, str]] = []
        bar = _Progress(progress, n, self.spec.name)
        try:
            for start in range(0, n, batch_size):
                groups: dict[tuple[int, ...], tuple[list[int], list[torch.Tensor]]] = {}
                for i in range(start, min(start + batch_size, n)):
                    name = describe(items[i], i)
                    try:
                        tensor = self.preprocess(load_image(items[i], name), name)
                    except ImageError as exc:
                        errors.append((i, exc.source, exc.reason))
                        continue
                    idx, tensors = groups.setdefault(tuple(tensor.shape), ([], []))
                    idx.append(i)
                    tensors.append(tensor)
                # one forward per input shape: full-resolution metrics (CLIP-IQA RN50) see mixed sizes
                for idx, tensors in groups.values():
                    pixels = torch.stack(tensors).to(self.device, self.dtype)
                    batch_prompts = [prompts[i] for i in idx] if prompts is not None else None
                    values = self.forward(pixels, batch_prompts).float().cpu().numpy()
                    out[idx] = values.reshape(len(idx), k)
                bar.advance(min(start + batch_size, n) - start)
        finally:
            bar.close()
        return out, errors

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
