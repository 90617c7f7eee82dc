"""Qwen2-VL / Qwen2.5-VL inputs shared by HPSv3 and VQAScore: image resize and patches, chat template.

* :func:`smart_resize`: the arithmetic of ``qwen_vl_utils.smart_resize`` (also copied into HPSv3 and the
  transformers image processor): both sides rounded to multiples of 28, the area brought into
  ``[min_pixels, max_pixels]``, the aspect ratio kept.
* :class:`QwenVisionSettings`: the ``preprocessor_config.json`` fields of ``Qwen2VLImageProcessor``.
* :func:`qwen_pixels` / :func:`qwen_pixels_tensor`: Pillow ``convert("RGB")``, a first resize to the
  caller's pixel budget (``qwen_vl_utils.fetch_image`` or HPSv3's copy: Pillow bicubic on 8-bit RGB), the
  processor's own resize (a no-op on such sizes unless its budget is narrower), ``* 1/255`` (float64 stored
  as float32), mean/std, 14x14 patches repeated over 2 frames in 2x2 merge windows.
* :func:`read_chat_template` / :func:`compile_template`: the chat template from ``chat_template.jinja``,
  ``chat_template.json`` or ``tokenizer_config.json``, rendered as transformers does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, ModelSourceError
from ..images import to_rgb
from ..preprocess import OPENAI_MEAN, OPENAI_STD, resize

IMAGE_TOKEN = "<|image_pad|>"
IMAGE_FACTOR = 28
#: ``qwen_vl_utils.vision_process``: the pixel budget of ``fetch_image`` when a message sets none
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, max_ratio: float | None = None) -> tuple[int, int]:
    """``(height, width)`` rounded to multiples of ``factor`` with the area in ``[min_pixels, max_pixels]``.

    ``qwen_vl_utils.smart_resize``'s arithmetic (Python floats, ``round`` half to even, floor when
    shrinking, ceil when growing). The reference refuses aspect ratios above 200 (``max_ratio``);
    prefscore passes ``None`` and scores such images.
    """
    if max_ratio is not None and max(height, width) / min(height, width) > max_ratio:
        raise ValueError(f"absolute aspect ratio must be smaller than {max_ratio}, got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


class QwenVisionSettings:
    """The fields of Qwen2-VL's ``preprocessor_config.json`` used here (defaults: Qwen2-VL-7B-Instruct's)."""

    def __init__(self, cfg: dict | None = None):
        cfg = cfg or {}
        size = cfg.get("size") or {}
        self.min_pixels = int(cfg.get("min_pixels", size.get("shortest_edge", 56 * 56)))
        self.max_pixels = int(cfg.get("max_pixels", size.get("longest_edge", 28 * 28 * 16384)))
        self.patch = int(cfg.get("patch_size", 14))
        self.temporal = int(cfg.get("temporal_patch_size", 2))
        self.merge = int(cfg.get("merge_size", 2))
        self.mean = tuple(cfg.get("image_mean", OPENAI_MEAN))
        self.std = tuple(cfg.get("image_std", OPENAI_STD))
        self.resample = int(cfg.get("resample", 3))
        self.rescale = float(cfg.get("rescale_factor", 1 / 255))
        if self.patch * self.merge != IMAGE_FACTOR:
            raise CheckpointError(f"Qwen2-VL image settings with patch {self.patch} x merge {self.merge} != 28 are not "
                                  "supported (the first resize rounds to multiples of 28, as qwen_vl_utils does)")

    def key(self) -> tuple:
        return (self.min_pixels, self.max_pixels, self.patch, self.temporal, self.merge, self.mean, self.std,
                self.resample, self.rescale)

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal * self.patch * self.patch

    def sizes(self, height: int, width: int, first: tuple[int, int]) -> tuple[int, int]:
        """Final ``(height, width)``: the first resize to ``first = (min_pixels, max_pixels)``, then the processor's."""
        h, w = smart_resize(height, width, IMAGE_FACTOR, *first)
        return smart_resize(h, w, IMAGE_FACTOR, self.min_pixels, self.max_pixels)

    def patchify(self, chw: torch.Tensor) -> torch.Tensor:
        """``(..., 3, H, W)`` normalised pixels -> ``(..., H/28, W/28, 2, 2, 3*T*14*14)``: the processor's
        flattened patches in its order (merge windows row-major, 2x2 patches inside each), ``T`` copies of
        the frame."""
        *lead, c, h, w = chw.shape
        p, m, t = self.patch, self.merge, self.temporal
        x = chw.reshape(*lead, c, h // (p * m), m, p, w // (p * m), m, p)
        n = len(lead)
        # -> lead, gh/m, gw/m, m(h), m(w), c, p(h), p(w)
        x = x.permute(*range(n), n + 1, n + 4, n + 2, n + 5, n, n + 3, n + 6)
        x = x.unsqueeze(-3).expand(*x.shape[:-2], t, p, p)  # the frame repeated T times (np.tile)
        return x.reshape(*lead, h // (p * m), w // (p * m), m, m, c * t * p * p)


def qwen_pixels(image: Image.Image, settings: QwenVisionSettings, first: tuple[int, int],
                name: str = "<image>") -> torch.Tensor:
    """One decoded image (stored mode) -> the patches the Qwen2-VL image processor gives the vision tower.

    ``first``: ``(min_pixels, max_pixels)`` of the caller's resize before the processor (Pillow bicubic).
    """
    rgb = to_rgb(image, name)
    w, h = rgb.size
    rh, rw = smart_resize(h, w, IMAGE_FACTOR, *first)
    rgb = resize(rgb, (rw, rh), Image.BICUBIC, name)
    fh, fw = smart_resize(rh, rw, IMAGE_FACTOR, settings.min_pixels, settings.max_pixels)
    rgb = resize(rgb, (fw, fh), settings.resample, name)
    array = (np.asarray(rgb, dtype=np.uint8).astype(np.float64) * settings.rescale).astype(np.float32)
    array = (array - np.asarray(settings.mean, dtype=np.float32)) / np.asarray(settings.std, dtype=np.float32)
    return settings.patchify(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))


def qwen_pixels_tensor(pixels: torch.Tensor, settings: QwenVisionSettings, first: tuple[int, int],
                       quantize: bool = True) -> torch.Tensor:
    """Differentiable twin of :func:`qwen_pixels` for RGB ``(B, 3, H, W)`` in [0, 1] (one size per batch):
    one bicubic resize to the final size (the processor's resize is a no-op after the first)."""
    from ..differentiable import RESAMPLE_MODES, check_pixels, normalize_tensor, pil_resize, to_levels

    x = to_levels(check_pixels(pixels), quantize)
    h, w = settings.sizes(x.shape[-2], x.shape[-1], first)
    x = pil_resize(x, h, w, "bicubic", quantize)
    x = (x.double() * settings.rescale).float()
    x = normalize_tensor(x, settings.mean, settings.std)
    if settings.resample not in RESAMPLE_MODES:
        raise ValueError(f"processor resample {settings.resample} is not supported by score_tensor")
    return settings.patchify(x)


def grid_of(pixels: torch.Tensor) -> tuple[int, int, int]:
    """``(B, H/28, W/28, m, m, D)`` patches -> ``(batch, grid_h, grid_w)`` in 14-px patches."""
    b, gh, gw, m = pixels.shape[:4]
    return b, gh * m, gw * m


# -- chat template -------------------------------------------------------------------------------
def template_from(path: Path) -> str | None:
    """The template in ``chat_template.jinja`` / ``chat_template.json`` / ``tokenizer_config.json``, or None."""
    if path.suffix == ".jinja":
        return path.read_text(encoding="utf-8")
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: cannot read: {exc}") from None
    return template if isinstance(template, str) else None


def read_chat_template(directory: Path) -> str | None:
    """The chat template of a local model folder (``TEMPLATE_FILES`` in that order), or None."""
    for name in TEMPLATE_FILES:
        if (directory / name).is_file():
            template = template_from(directory / name)
            if template is not None:
                return template
    return None


def compile_template(template: str):
    """A jinja template in transformers' chat-template environment (sandboxed, trim/lstrip blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template)


def load_tokenizer(tokenizer_file: Path):
    """The Qwen2 fast tokenizer (``tokenizers.Tokenizer``) from ``tokenizer.json``."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise ModelSourceError(f"{tokenizer_file}: cannot load the Qwen2 tokenizer: {exc}") from None


__all__ = ["IMAGE_TOKEN", "MAX_PIXELS", "MIN_PIXELS", "QwenVisionSettings", "compile_template", "grid_of",
           "load_tokenizer", "qwen_pixels", "qwen_pixels_tensor", "read_chat_template", "smart_resize",
           "template_from"]
