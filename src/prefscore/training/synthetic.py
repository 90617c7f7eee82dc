"""A synthetic preference data set with a known answer: clean images versus degraded copies.

Scenes are procedural "natural-looking" images (a sky-to-ground colour gradient, 1/f-noise texture,
soft-edged blobs and a horizon line). Degradations, each at a random level: Gaussian blur
(radius 1-3 px), additive Gaussian noise (sigma 8-30 of 255), JPEG (quality 8-30) and contrast
reduction (factor 0.35-0.7). Used by the tests and the worked example in ``docs/training.md``::

    python -m prefscore.training.synthetic demo-data      # writes demo-data/pairs.csv and ratings.csv
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ..data import Pair, Rating, write_judgements

DEGRADATIONS = ("blur", "noise", "jpeg", "contrast")
_RANGES = {"blur": (1.0, 3.0), "noise": (8.0, 30.0), "jpeg": (30.0, 8.0), "contrast": (0.7, 0.35)}  # mild -> strong


def scene(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """One procedural scene, ``(size, size, 3)`` uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    sky, ground = rng.uniform(0.2, 0.9, 3), rng.uniform(0.05, 0.6, 3)
    horizon = rng.uniform(0.3, 0.7) + 0.08 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 2) + rng.uniform()))
    mix = 1 / (1 + np.exp(-(yy - horizon) * 40))
    img = sky * (1 - mix[..., None]) + ground * mix[..., None]
    img = img * (1 - 0.3 * yy[..., None] * (1 - mix[..., None]))
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius ** 1.6
    texture = np.real(np.fft.ifft2(spectrum))
    texture = (texture - texture.mean()) / (texture.std() + 1e-8)
    img = img + 0.06 * texture[..., None] * (0.5 + mix[..., None])
    for _ in range(rng.integers(2, 6)):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
        z = np.clip(((yy - cy) ** 2 + (xx - cx) ** 2 - r**2) / (r * 0.02), -50, 50)
        soft = 1 / (1 + np.exp(z))  # 1 inside the disc, 0 outside, a soft edge
        colour = rng.uniform(0, 1, 3)
        img = img * (1 - soft[..., None]) + colour * soft[..., None]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def crop(image: np.ndarray, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """A random ``size`` x ``size`` window of a scene (two crops of one scene differ slightly)."""
    top, left = rng.integers(0, image.shape[0] - size + 1), rng.integers(0, image.shape[1] - size + 1)
    return Image.fromarray(image[top:top + size, left:left + size])


def degrade(image: Image.Image, kind: str, severity: float, rng: np.random.Generator) -> Image.Image:
    """``kind`` in :data:`DEGRADATIONS` at ``severity`` in [0, 1] (0 = mildest level of the range, 1 = strongest)."""
    lo, hi = _RANGES[kind]
    level = lo + (hi - lo) * severity
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(level))
    if kind == "noise":
        a = np.asarray(image, np.float64) + rng.normal(0, level, (image.height, image.width, 3))
        return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=int(round(level)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return ImageEnhance.Contrast(image).enhance(level)


@dataclass
class SyntheticSet:
    """What was written: the judgement records and, per strict pair, the noise-free label."""

    path: Path
    records: list
    true_labels: list[str]


def make_pairs(root: str | Path, n_scenes: int = 60, pairs_per_scene: int = 6, tie_fraction: float = 0.15,
               label_noise: float = 0.1, seed: int = 0, file_name: str = "pairs.csv") -> SyntheticSet:
    """Preference pairs: two crops of one scene, one of them degraded (the clean one is preferred);
    a ``tie_fraction`` of pairs degrade both crops with the same kind and level (label ``tie``);
    a ``label_noise`` fraction of strict labels is flipped. The prompt names the scene."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, truth = [], []
    for s in range(n_scenes):
        base = scene(rng)
        prompt = f"scene {s}"
        for k in range(pairs_per_scene):
            a, b = crop(base, rng), crop(base, rng)
            kind, sev = DEGRADATIONS[rng.integers(len(DEGRADATIONS))], float(rng.uniform())
            if rng.uniform() < tie_fraction:
                a, b, label, true = degrade(a, kind, sev, rng), degrade(b, kind, sev, rng), "tie", "tie"
            else:
                if rng.uniform() < 0.5:
                    b, true = degrade(b, kind, sev, rng), "a"
                else:
                    a, true = degrade(a, kind, sev, rng), "b"
                label = ({"a": "b", "b": "a"}[true]) if rng.uniform() < label_noise else true
            names = []
            for side, im in (("a", a), ("b", b)):
                name = f"images/s{s:03d}_p{k}_{side}.png"
                im.save(root / name)
                names.append(str(root / name))
            records.append(Pair(prompt, names[0], names[1], label))
            truth.append(true)
    path = write_judgements(root / file_name, records)
    return SyntheticSet(path, records, truth)


def make_ratings(root: str | Path, n_scenes: int = 40, images_per_scene: int = 6, kinds: tuple[str, ...] = DEGRADATIONS,
                 seed: int = 1, file_name: str = "ratings.csv") -> SyntheticSet:
    """Ratings with a known monotone target: each image is a crop degraded by one of ``kinds`` at a
    severity ``s`` uniform in [0, 1], rated ``score = 10 - 6 s`` (no rating noise). The prompt names
    the scene."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for s in range(n_scenes):
        base = scene(rng)
        for k in range(images_per_scene):
            kind, sev = kinds[rng.integers(len(kinds))], float(rng.uniform())
            name = f"images/r{s:03d}_{k}.png"
            degrade(crop(base, rng), kind, sev, rng).save(root / name)
            records.append(Rating(f"scene {s}", str(root / name), 10.0 - 6.0 * sev))
    path = write_judgements(root / file_name, records)
    return SyntheticSet(path, records, [])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "prefscore-demo-data")
    p = make_pairs(root)
    r = make_ratings(root)
    print(f"wrote {len(p.records)} pairs to {p.path} and {len(r.records)} ratings to {r.path}")


if __name__ == "__main__":
    main()
