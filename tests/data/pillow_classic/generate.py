"""Write resized.npz: seeded images (several 8-bit modes) and Pillow 12.3.0's ``Image.resize`` of each.

Sizes mix a strong height reduction with a width change (where Pillow 13 runs the vertical pass first), growth
on one axis and shrinkage on the other, and plain cases; filters bicubic, bilinear and Lanczos.
"""

from pathlib import Path

import numpy as np
import PIL
from PIL import Image

HERE = Path(__file__).parent
SEED = 20261205
MODES = {"RGB": 3, "L": 1, "RGBA": 4, "LA": 2, "CMYK": 4}
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}
# (h, w) -> (new_h, new_w)
SIZES = [((80, 40), (20, 36)), ((66, 77), (56, 84)), ((70, 90), (56, 84)), ((70, 100), (56, 112)),
         ((96, 30), (12, 28)), ((45, 72), (40, 60)), ((30, 30), (60, 20)), ((50, 60), (25, 30))]


def main() -> None:
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    k = 0
    for (h, w), (nh, nw) in SIZES:
        for mode, channels in MODES.items():
            for fname, flt in [list(FILTERS.items())[k % len(FILTERS)]]:
                pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
                image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
                out = np.asarray(image.resize((nw, nh), flt))
                arrays[f"in_{k}"] = pixels
                arrays[f"out_{k}"] = out
                arrays[f"meta_{k}"] = np.array([nh, nw, list(MODES).index(mode), list(FILTERS).index(fname)])
                k += 1
    np.savez_compressed(HERE / "resized.npz", pillow=np.array(PIL.__version__), **arrays)
    print(f"{k} cases, Pillow {PIL.__version__}")


if __name__ == "__main__":
    main()
