"""The three image pipelines of the official implementations, reproduced without torchvision.

Each function takes a decoded PIL image in its stored mode and returns a float32 tensor
``(3, size, size)`` normalised with the given mean/std. Which pipeline a metric uses, and why the
differences matter (up to 1e-2 in score), is in ``REFERENCE-METRICS.md`` and the README:

* :func:`openai_clip` - OpenAI ``clip`` ``_transform``: resize the short side in the image's own
  mode, centre-crop with rounded offsets, then convert to RGB (LAION aesthetic, ImageReward).
* :func:`hf_clip` - transformers 4.x ``CLIPImageProcessor``: convert to RGB first, resize the short
  side (long side truncated), centre-crop with floored offsets (PickScore, CLIP-IQA, CLIPScore);
  with a fixed ``{"height", "width"}`` size and no crop it is transformers 4.x
  ``SiglipImageProcessor`` (squash to 384x384 without keeping the aspect: Aesthetic Predictor V2.5).
* :func:`hps_pad` - HPSv2 ``light_augmentation``: to tensor, resize the *long* side with antialiased
  bicubic on float values (no clamping), zero-pad to a square, normalise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import ImageError
from .images import to_rgb

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(chw: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=chw.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=chw.dtype).view(-1, 1, 1)
    return (chw - mean_t) / std_t


def to_tensor(rgb: Image.Image) -> torch.Tensor:
    """torchvision ``ToTensor`` for an RGB image: uint8 HWC -> float32 CHW in [0, 1]."""
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255)


#: 8-bit modes whose resampling runs as two separable passes (the ones affected by the pass order)
EIGHT_BIT_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def resize(image: Image.Image, size: tuple[int, int], resample: int, name: str = "<image>", **kw) -> Image.Image:
    """``image.resize(size, resample)`` with the result Pillow up to 12 gives, on every Pillow version.

    Pillow resamples in two separable 8-bit passes. Up to Pillow 12 the horizontal pass always runs first;
    Pillow 13 runs the vertical pass first when the height shrinks much more than the width
    (python-pillow/Pillow#9549), which changes the rounded pixels by a few levels and a model's score by up to
    about 1e-2. Every official implementation prefscore reproduces was run (and pins) an earlier Pillow, so
    both passes are requested here one at a time, horizontal first (RGBA/LA premultiplied around both, as
    Pillow does around one call): bit-identical to Pillow <= 12's single call, whichever Pillow is installed.
    """
    if image.size == size:
        return image
    (w, h), (new_w, new_h) = image.size, size
    try:
        if (resample == Image.NEAREST or kw.get("reducing_gap") is not None or image.mode not in EIGHT_BIT_MODES
                or w == new_w or h == new_h):
            return image.resize(size, resample, **kw)
        premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
        im = image.convert(premultiplied) if premultiplied else image
        im = im.resize((new_w, h), resample).resize((new_w, new_h), resample)
        return im.convert(image.mode) if premultiplied else im
    except (ValueError, OSError) as exc:
        raise ImageError(name, f"cannot resize mode {image.mode!r}: {exc}") from None


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """``(new_h, new_w)``: short side to ``size``, long side ``int()``-truncated (torchvision and HF 4.x)."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def openai_clip(image: Image.Image, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD, name: str = "<image>") -> torch.Tensor:
    """OpenAI CLIP's ``Resize(size, BICUBIC) -> CenterCrop(size) -> convert('RGB') -> ToTensor -> Normalize``.

    The resize runs on the image in its stored mode (Pillow then uses NEAREST for P/1 images and
    premultiplied alpha for RGBA), with the long side ``int()``-truncated as torchvision does; the
    crop offsets are ``round((dim - size) / 2)`` (half to even).
    """
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    image = resize(image, (new_w, new_h), Image.BICUBIC, name)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return normalize(to_tensor(to_rgb(image, name)), mean, std)


#: Processors without a centre-crop step (their configs have no ``crop_size``; SigLIP's squashes the
#: image to ``size``), whatever ``do_center_crop`` says.
NO_CROP_PROCESSORS = ("SiglipImageProcessor", "SiglipImageProcessorFast")


@dataclass(frozen=True)
class HFProcessorConfig:
    """The fields of a ``preprocessor_config.json`` that CLIP-style processors use.

    The resize target is the short side ``shortest_edge`` (aspect kept, long side truncated), or,
    when ``height`` and ``width`` are set (``size: {"height": H, "width": W}``), exactly ``W x H``
    without keeping the aspect ratio.
    """

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: int = 3
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True
    rescale_factor: float = 1 / 255
    height: int | None = None
    width: int | None = None

    def resize_to(self, h: int, w: int) -> tuple[int, int]:
        """``(new_h, new_w)`` of an ``h x w`` image: the fixed size, or the short side to
        ``shortest_edge`` with the long side ``int()``-truncated (torchvision and transformers 4.x)."""
        if self.height is not None and self.width is not None:
            return self.height, self.width
        return short_side_size(h, w, self.shortest_edge)

    @classmethod
    def from_dict(cls, cfg: dict) -> "HFProcessorConfig":
        size = cfg.get("size", 224)
        height = width = None
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                height, width = int(size["height"]), int(size["width"])
                size = min(height, width)
            elif "shortest_edge" in size:
                size = size["shortest_edge"]
            else:
                raise ValueError(f"unsupported processor size {size!r} (expected an int, shortest_edge, or height and width)")
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            crop_h, crop_w = crop["height"], crop["width"]
        else:
            crop_h = crop_w = crop
        return cls(
            shortest_edge=int(size),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            resample=int(cfg.get("resample", 3)),
            mean=tuple(cfg.get("image_mean", OPENAI_MEAN)),
            std=tuple(cfg.get("image_std", OPENAI_STD)),
            do_resize=bool(cfg.get("do_resize", True)),
            do_center_crop=bool(cfg.get("do_center_crop", True)) and cfg.get("image_processor_type") not in NO_CROP_PROCESSORS,
            do_normalize=bool(cfg.get("do_normalize", True)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            height=height,
            width=width,
        )


def hf_clip(image: Image.Image, cfg: HFProcessorConfig = HFProcessorConfig(), name: str = "<image>") -> torch.Tensor:
    """transformers 4.x ``CLIPImageProcessor`` / ``SiglipImageProcessor`` on a PIL image, in Pillow and numpy.

    ``convert('RGB')`` (alpha dropped, never composited) -> short side to ``shortest_edge`` with
    the long side ``int()``-truncated, or exactly ``width x height`` when the config fixes both
    (:meth:`HFProcessorConfig.resize_to`), Pillow resample on uint8 -> centre crop with floored
    offsets (CLIP only) -> ``* rescale_factor`` (in float64, stored as float32) -> normalise.
    """
    image = to_rgb(image, name)
    if cfg.do_resize:
        new_h, new_w = cfg.resize_to(image.height, image.width)
        image = resize(image, (new_w, new_h), cfg.resample, name, reducing_gap=None)
    array = np.asarray(image, dtype=np.uint8)
    if cfg.do_center_crop:
        array = _center_crop_floor(array, cfg.crop_height, cfg.crop_width)
    pixels = (array.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    if cfg.do_normalize:
        pixels = (pixels - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _center_crop_floor(array: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' ``center_crop``: floored offsets, zero padding where the image is smaller."""
    h, w = array.shape[:2]
    if h < crop_h or w < crop_w:
        padded = np.zeros((max(h, crop_h), max(w, crop_w), array.shape[2]), dtype=array.dtype)
        top_pad, left_pad = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        padded[top_pad : top_pad + h, left_pad : left_pad + w] = array
        array, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return array[top : top + crop_h, left : left + crop_w]


def resize_max_pad(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """HPSv2's ``ResizeMaxSize`` on a float tensor ``(..., C, H, W)``: long side to ``size`` with
    ``round()`` (half to even), antialiased bicubic without clamping, then zero padding split
    ``pad // 2`` left/top and the rest right/bottom. Differentiable.

    The reference skips resize *and* padding when the long side already equals ``size``, which
    leaves a non-square image that its model then rejects; here such an image is padded.
    """
    h, w = pixels.shape[-2:]
    scale = size / max(h, w)
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        batched = pixels if pixels.dim() == 4 else pixels.unsqueeze(0)
        batched = F.interpolate(batched, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        pixels = batched if pixels.dim() == 4 else batched.squeeze(0)
        h, w = new_h, new_w
    pad_h, pad_w = size - h, size - w
    if pad_h or pad_w:
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return pixels


def hps_pad(image: Image.Image, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD, name: str = "<image>") -> torch.Tensor:
    """HPSv2's ``light_augmentation`` eval transform.

    The reference keeps RGBA images as RGBA and then crashes in the 3-channel conv; here the alpha
    channel is dropped with Pillow's ``convert('RGB')``, as every other metric does.
    """
    pixels = to_tensor(to_rgb(image, name))
    return normalize(resize_max_pad(pixels, size), mean, std)
