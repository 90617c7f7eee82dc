"""Differentiable (pure torch) versions of the metrics' image pipelines, for :meth:`Metric.score_tensor`.

Every function takes a float batch ``pixels`` of shape ``(B, 3, H, W)`` with values in [0, 1] (RGB,
any device) and returns the model input ``(B, 3, S, S)`` (float32, on the same device), so that
gradients flow from a score back to the pixels. They mirror :mod:`prefscore.preprocess`:

* :func:`openai_clip_tensor` - OpenAI ``clip._transform``: short side to ``size`` (long side
  ``int()``-truncated), crop with ``round()`` offsets, normalise (LAION aesthetic, ImageReward,
  CLIPScore with an OpenAI ``.pt``);
* :func:`hf_clip_tensor` - transformers 4.x ``CLIPImageProcessor``: the same resize, crop with
  floored offsets and zero padding, ``rescale_factor``, normalise (PickScore, CLIP-IQA, CLIPScore);
  with a fixed size and no crop, ``SiglipImageProcessor`` (Aesthetic Predictor V2.5);
* :func:`hps_tensor` - HPSv2: :func:`prefscore.preprocess.resize_max_pad` (already torch), normalise;
* :func:`unresized_tensor` - the original CLIP-IQA RN50 pipeline: full resolution, normalise only.

**How the exact (Pillow) path is matched.** The reference pipelines resize 8-bit images with
Pillow: a horizontal pass, clipped and rounded to 0..255, then a vertical pass, rounded again, each
with fixed-point filter weights (22 bits). With ``quantize=True`` (the default) the input is first
rounded to the 256 levels an 8-bit file holds, and each pass is a matrix product with Pillow's own
integer weights (:func:`pil_coefficients`) followed by Pillow's rounding, in float64, where those
integer sums are exact: the forward values equal Pillow's. Every rounding is a straight-through
estimator (forward: ``round``; backward: identity), every clip passes the gradient of the clamp,
so the gradient is that of the linear antialiased resize. ``quantize=False`` drops the roundings
and resizes with ``torch.nn.functional.interpolate(..., antialias=True)`` (Pillow's filters in
float): a smooth function of the pixels, slightly further from the exact scores. Measured gaps per
metric: ``docs/generation.md``.

What the tensor path cannot see: an image file's stored mode. Pillow resizes palette (``P``) images
with NEAREST and RGBA images premultiplied *before* the RGB conversion; a tensor is already RGB,
so for such files it agrees with the score of ``image.convert("RGB")``, not of the file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import OPENAI_MEAN, OPENAI_STD, HFProcessorConfig, resize_max_pad, short_side_size

#: Pillow resample codes (as in ``preprocessor_config.json``) that have a torch antialiased twin.
RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


def check_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels`` must be a floating tensor ``(B, 3, H, W)``; returned as float32."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixels must be a torch.Tensor (B, 3, H, W) in [0, 1], not {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must have shape (B, 3, H, W) (RGB, values in [0, 1]); got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be a float tensor with values in [0, 1], not {pixels.dtype} "
                         "(divide 8-bit images by 255)")
    if pixels.shape[0] == 0 or pixels.shape[2] == 0 or pixels.shape[3] == 0:
        raise ValueError(f"pixels has an empty dimension: {tuple(pixels.shape)}")
    return pixels.float()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (straight-through estimator)."""
    return x + (x.round() - x).detach()


def to_levels(pixels: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """[0, 1] pixels -> 0..255 values; with ``quantize`` clamped and rounded (straight-through) to
    the integers an 8-bit image holds, as saving the image would."""
    values = pixels * 255.0
    return round_ste(values.clamp(0.0, 255.0)) if quantize else values


PRECISION_BITS = 22
"""Pillow's fixed-point precision for 8-bit resampling (``Resample.c``: ``32 - 8 - 2``)."""


def _filter(x: np.ndarray, mode: str) -> np.ndarray:
    """Pillow's resampling filters: bicubic with ``a = -0.5`` (support 2), bilinear (support 1)."""
    x = np.abs(x)
    if mode == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int, mode: str = "bicubic", fixed_point: bool = True) -> np.ndarray:
    """The ``(out_size, in_size)`` resampling matrix of Pillow's ``precompute_coeffs`` (float64).

    Antialiased: the filter support grows with the downscale factor; taps are rounded to the
    nearest input pixel and each row is normalised to sum 1. With ``fixed_point`` the weights are
    Pillow's 8-bit integers ``round(w * 2**22)`` (still as float64), as ``normalize_coeffs_8bpc``.
    """
    support_1 = 1.0 if mode == "bilinear" else 2.0
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support_1 * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = np.arange(xmin, xmax)
        w = _filter((taps - center + 0.5) * (1.0 / filterscale), mode)  # Pillow multiplies by ss = 1/filterscale
        total = w.sum()
        matrix[xx, xmin:xmax] = w / total if total != 0.0 else w
    if fixed_point:
        scaled = matrix * (1 << PRECISION_BITS)
        matrix = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5))
    return matrix


def _pass_fixed(levels: torch.Tensor, matrix: np.ndarray, axis: int) -> torch.Tensor:
    """One exact 8-bit Pillow pass along ``axis`` (-1: width, -2: height), straight-through rounding.

    Integer levels times integer weights summed in float64 are exact; the output is Pillow's
    ``clip8((2**21 + sum) >> 22)``. Backward: the linear resampling (identity through the rounding).
    """
    device = levels.device if levels.device.type != "mps" else torch.device("cpu")  # MPS has no float64
    k = torch.from_numpy(matrix).to(device)
    x = levels.to(device, torch.float64)
    total = x @ k.t() if axis == -1 else (x.transpose(-1, -2) @ k.t()).transpose(-1, -2)
    linear = (total / float(1 << PRECISION_BITS)).clamp(0.0, 255.0)
    exact = torch.floor((total + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)).clamp(0.0, 255.0)
    out = linear + (exact - linear).detach()
    return out if device == levels.device else out.to(levels.device, torch.float32)


def pil_resize(levels: torch.Tensor, height: int, width: int, mode: str = "bicubic", quantize: bool = True) -> torch.Tensor:
    """Pillow's 8-bit ``Image.resize`` (``reducing_gap=None``) on 0..255 values ``(B, C, H, W)``.

    Two separable passes, horizontal first as Pillow up to 12 and :func:`prefscore.preprocess.resize`
    on any Pillow, each clipped to 0..255; a pass whose size does not change is skipped, as Pillow does. With ``quantize`` each pass uses Pillow's fixed-point weights and
    rounding (straight-through), which reproduces Pillow's output values exactly; without it each
    pass is ``interpolate(..., antialias=True)`` (the same filters in float, no rounding).
    Returns float64 with ``quantize``, else ``levels``' dtype.
    """
    h, w = levels.shape[-2:]
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"resize mode must be 'bicubic' or 'bilinear', not {mode!r}")
    x = levels
    if quantize:
        if w != width:
            x = _pass_fixed(x, pil_coefficients(w, width, mode), -1)
        if h != height:
            x = _pass_fixed(x, pil_coefficients(h, height, mode), -2)
        return x
    if w != width:
        x = F.interpolate(x, size=(h, width), mode=mode, align_corners=False, antialias=True).clamp(0.0, 255.0)
    if h != height:
        x = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=True).clamp(0.0, 255.0)
    return x


def normalize_tensor(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, constants as float32 on ``x``'s device."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def openai_clip_tensor(pixels: torch.Tensor, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD,
                       quantize: bool = True) -> torch.Tensor:
    """OpenAI CLIP ``Resize(size, BICUBIC) -> CenterCrop(size) -> ToTensor -> Normalize`` in torch.

    ``pixels`` ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, size, size)`` normalised; crop offsets
    ``round((dim - size) / 2)`` (half to even) as torchvision's ``CenterCrop``.
    """
    x = to_levels(check_pixels(pixels), quantize)
    new_h, new_w = short_side_size(x.shape[-2], x.shape[-1], size)
    x = pil_resize(x, new_h, new_w, "bicubic", quantize).float()
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top: top + size, left: left + size]
    return normalize_tensor(x / 255.0, mean, std)


def hf_center_crop(x: torch.Tensor, crop_h: int, crop_w: int) -> torch.Tensor:
    """transformers' ``center_crop``: zero padding (split floor/ceil) where smaller, floored offsets."""
    h, w = x.shape[-2:]
    if h < crop_h or w < crop_w:
        ph, pw = max(h, crop_h) - h, max(w, crop_w) - w
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        h, w = x.shape[-2:]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return x[..., top: top + crop_h, left: left + crop_w]


def hf_clip_tensor(pixels: torch.Tensor, cfg: HFProcessorConfig = HFProcessorConfig(), quantize: bool = True) -> torch.Tensor:
    """transformers 4.x ``CLIPImageProcessor`` / ``SiglipImageProcessor`` (see
    :func:`prefscore.preprocess.hf_clip`) in torch.

    Short side to ``cfg.shortest_edge`` (long side truncated), or the fixed ``height x width``,
    with the processor's resample (bicubic or bilinear), centre crop with floored offsets where
    the processor crops, ``* cfg.rescale_factor``, normalise.
    """
    x = to_levels(check_pixels(pixels), quantize)
    if cfg.do_resize:
        if cfg.resample not in RESAMPLE_MODES:
            raise ValueError(f"processor resample {cfg.resample} has no antialiased torch equivalent; "
                             f"differentiable preprocessing supports {sorted(RESAMPLE_MODES)} (bilinear, bicubic)")
        new_h, new_w = cfg.resize_to(x.shape[-2], x.shape[-1])
        x = pil_resize(x, new_h, new_w, RESAMPLE_MODES[cfg.resample], quantize)
    if cfg.do_center_crop:
        x = hf_center_crop(x, cfg.crop_height, cfg.crop_width)
    x = (x.double() * cfg.rescale_factor).float()  # as the processor: float64 product stored as float32
    return normalize_tensor(x, cfg.mean, cfg.std) if cfg.do_normalize else x


def hps_tensor(pixels: torch.Tensor, size: int = 224, mean=OPENAI_MEAN, std=OPENAI_STD, quantize: bool = True) -> torch.Tensor:
    """HPSv2's ``light_augmentation`` in torch: the reference already resizes float tensors, so with
    8-bit input (``quantize``) this equals :func:`prefscore.preprocess.hps_pad` bit for bit."""
    x = to_levels(check_pixels(pixels), quantize) / 255.0
    return normalize_tensor(resize_max_pad(x, size), mean, std)


def unresized_tensor(pixels: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD, quantize: bool = True,
                     min_side: int = 1) -> torch.Tensor:
    """CLIP-IQA's RN50 pipeline: full resolution, ``/255``, normalise (no resize, no crop)."""
    x = check_pixels(pixels)
    if min(x.shape[-2:]) < min_side:
        raise ValueError(f"images are {x.shape[-1]}x{x.shape[-2]}; this backbone needs at least {min_side} px per side")
    return normalize_tensor(to_levels(x, quantize) / 255.0, mean, std)


def measure_gap(metric, images, prompts=None, quantize: bool = True) -> list[dict]:
    """Per image: the exact score (:meth:`Metric.score` of the image converted to RGB), the
    differentiable score (:meth:`Metric.score_tensor` of its 8-bit RGB pixels / 255), and their
    absolute and relative differences (one row per output column; relative is NaN where the exact
    score is 0). ``images``: paths or PIL images; ``prompts``: one per image for prompt-aware metrics.
    """
    import math

    from PIL import Image

    rows = []
    for i, item in enumerate(images):
        image = item if isinstance(item, Image.Image) else Image.open(item)
        rgb = image.convert("RGB")
        prompt = prompts[i] if prompts is not None else None
        exact = np.atleast_1d(np.asarray(metric.score(rgb, prompt), dtype=np.float64))
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            tensor = metric.score_tensor(pixels, prompt, quantize=quantize).double().cpu().numpy().reshape(-1)
        for k, name in enumerate(metric.output_names):
            diff = abs(float(tensor[k]) - float(exact[k]))
            rows.append({"image": str(item) if not isinstance(item, Image.Image) else f"#{i}", "output": name,
                         "prompt": prompt, "exact": float(exact[k]), "tensor": float(tensor[k]), "abs": diff,
                         "rel": diff / abs(float(exact[k])) if exact[k] != 0 else math.nan})
    return rows
