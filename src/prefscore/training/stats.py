"""A pretrained-weight-free image "backbone": fixed hand-crafted statistics of an image.

Every feature is a deterministic function of the decoded pixels (converted to RGB with Pillow's
``convert("RGB")``). Images whose long side exceeds ``MAX_SIDE`` are first downscaled to it with
Pillow's bicubic filter so that sharpness and noise are measured at a comparable scale; the JPEG
blockiness features are measured before that, on the 8x8 grid of the stored image. Luminance is
``Y = 0.299 R + 0.587 G + 0.114 B`` in [0, 1]. Scale-like quantities are log-transformed (with a
small floor) so that a linear head sees roughly additive effects. Trained heads standardise the
features with the training set's mean and standard deviation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..images import to_rgb

VERSION = "stats-v1"
MAX_SIDE = 512
_EPS = 1e-6

FEATURES: tuple[str, ...] = (
    "luma_mean", "luma_std", "luma_p05", "luma_p50", "luma_p95", "luma_range", "luma_entropy",
    "clip_dark", "clip_bright",
    "colourfulness", "saturation_mean", "saturation_std",
    "log_laplacian_var", "log_gradient_mean", "log_hf_energy", "log_mf_energy",
    "log_noise_immerkaer", "log_noise_mad",
    "edge_density", "local_contrast",
    "reblur_h", "reblur_v",
    "log_blockiness_h", "log_blockiness_v",
    "log_megapixels", "log_aspect",
)

_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _blockiness(y: np.ndarray, axis: int) -> float:
    """Mean |difference| across 8-pixel block boundaries over the mean elsewhere (1 = no blocking)."""
    d = np.abs(np.diff(y, axis=axis))
    n = d.shape[axis]
    if n < 16:
        return 1.0
    idx = np.arange(n)
    boundary = (idx % 8) == 7  # the step between pixel 8k+7 and 8k+8
    take = lambda m: np.take(d, np.nonzero(m)[0], axis=axis).mean()  # noqa: E731
    return float((take(boundary) + _EPS) / (take(~boundary) + _EPS))


def _reblur(y: np.ndarray, axis: int) -> float:
    """Crete-Roffet no-reference blur: how much a 9-tap box re-blur removes of the gradients (0 sharp .. 1 blurred)."""
    blurred = ndimage.uniform_filter1d(y, 9, axis=axis, mode="reflect")
    d_i = np.abs(np.diff(y, axis=axis))
    d_b = np.abs(np.diff(blurred, axis=axis))
    total = d_i.sum()
    if total <= _EPS:
        return 1.0
    return float(1.0 - np.maximum(0.0, d_i - d_b).sum() / total)


def _band_energy(y: np.ndarray) -> tuple[float, float]:
    """Shares of spectral power (DC removed) in radial frequency > 0.25 and 0.1-0.25 cycles/pixel."""
    spec = np.abs(np.fft.rfft2(y - y.mean())) ** 2
    fy = np.fft.fftfreq(y.shape[0])[:, None]
    fx = np.fft.rfftfreq(y.shape[1])[None, :]
    r = np.sqrt(fx**2 + fy**2)
    total = spec.sum() + _EPS
    return float(spec[r > 0.25].sum() / total), float(spec[(r > 0.1) & (r <= 0.25)].sum() / total)


def image_stats(image: Image.Image, name: str = "<image>") -> np.ndarray:
    """The ``len(FEATURES)`` statistics of one image, float64, in the order of :data:`FEATURES`."""
    rgb_img = to_rgb(image, name)
    w0, h0 = rgb_img.size
    full = np.asarray(rgb_img, dtype=np.float64) / 255.0
    y_full = _luma(full)
    block_h = _blockiness(y_full, axis=1)
    block_v = _blockiness(y_full, axis=0)
    if max(w0, h0) > MAX_SIDE:
        scale = MAX_SIDE / max(w0, h0)
        rgb_img = rgb_img.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))), Image.BICUBIC)
        rgb = np.asarray(rgb_img, dtype=np.float64) / 255.0
    else:
        rgb = full
    y = _luma(rgb)
    p05, p50, p95 = np.percentile(y, [5, 50, 95])
    hist = np.histogram(y, bins=64, range=(0.0, 1.0))[0].astype(np.float64)
    hist /= hist.sum()
    entropy = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())

    r, g, b = rgb[..., 0] * 255, rgb[..., 1] * 255, rgb[..., 2] * 255
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)) / 100.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, _EPS), 0.0)

    lap = ndimage.convolve(y, _LAPLACIAN, mode="reflect")
    gx, gy = ndimage.sobel(y, axis=1, mode="reflect") / 8.0, ndimage.sobel(y, axis=0, mode="reflect") / 8.0
    grad = np.hypot(gx, gy)
    hf, mf = _band_energy(y)
    h, w = y.shape
    if h > 2 and w > 2:
        conv = ndimage.convolve(y, _IMMERKAER, mode="reflect")[1:-1, 1:-1]
        noise_i = np.sqrt(np.pi / 2.0) * np.abs(conv).sum() / (6.0 * (w - 2) * (h - 2))
    else:
        noise_i = 0.0
    hh, ww = (h // 2) * 2, (w // 2) * 2
    if hh >= 2 and ww >= 2:
        q = y[:hh, :ww]
        diag = (q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) / 2.0
        noise_mad = np.median(np.abs(diag)) / 0.6745
    else:
        noise_mad = 0.0
    local_std = np.sqrt(np.maximum(ndimage.uniform_filter(y**2, 7) - ndimage.uniform_filter(y, 7) ** 2, 0.0))
    values = [
        y.mean(), y.std(), p05, p50, p95, p95 - p05, entropy,
        (y < 0.02).mean(), (y > 0.98).mean(),
        colourfulness, sat.mean(), sat.std(),
        np.log(lap.var() + _EPS), np.log(grad.mean() + _EPS), np.log(hf + _EPS), np.log(mf + _EPS),
        np.log(noise_i + 1e-4), np.log(noise_mad + 1e-4),
        (grad > 0.05).mean(), local_std.mean() / (y.std() + 1e-3),
        _reblur(y, 1), _reblur(y, 0),
        np.log(block_h), np.log(block_v),
        np.log(w0 * h0 / 1e6), np.log(w0 / h0),
    ]
    return np.asarray(values, dtype=np.float64)
