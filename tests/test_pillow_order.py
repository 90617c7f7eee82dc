"""prefscore's Pillow resize equals Pillow <= 12's on any installed Pillow (tests/data/pillow_classic, generator included).

Pillow 13 runs the vertical pass first when the height shrinks much more than the width (python-pillow/Pillow#9549);
every official implementation prefscore reproduces ran an earlier Pillow, so prefscore keeps the classic order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from prefscore.preprocess import resize

DATA = Path(__file__).parent / "data" / "pillow_classic" / "resized.npz"
MODES = ("RGB", "L", "RGBA", "LA", "CMYK")
FILTERS = (Image.BICUBIC, Image.BILINEAR, Image.LANCZOS)


def test_resize_reproduces_pillow_12_exactly():
    ref = np.load(DATA)
    assert str(ref["pillow"]) == "12.3.0"
    n = sum(k.startswith("out_") for k in ref.files)
    assert n == 40
    for k in range(n):
        nh, nw, mode, flt = (int(v) for v in ref[f"meta_{k}"])
        pixels = ref[f"in_{k}"]
        image = Image.fromarray(pixels[..., 0] if MODES[mode] == "L" else pixels, MODES[mode])
        got = np.asarray(resize(image, (nw, nh), FILTERS[flt]))
        assert got.shape == ref[f"out_{k}"].shape
        assert np.array_equal(got, ref[f"out_{k}"]), (k, MODES[mode], pixels.shape, (nh, nw))


def test_the_cases_include_ones_pillow_13_orders_differently():
    """At least one reference case is a resize whose single-call result differs between Pillow 12 and 13: the
    test above then proves the order, not just the arithmetic (with Pillow <= 12 installed the calls agree)."""
    import PIL

    ref = np.load(DATA)
    differs = 0
    for k in range(40):
        nh, nw, mode, flt = (int(v) for v in ref[f"meta_{k}"])
        pixels = ref[f"in_{k}"]
        image = Image.fromarray(pixels[..., 0] if MODES[mode] == "L" else pixels, MODES[mode])
        differs += not np.array_equal(np.asarray(image.resize((nw, nh), FILTERS[flt])), ref[f"out_{k}"])
    if int(PIL.__version__.split(".")[0]) >= 13:
        assert differs >= 5
    else:
        assert differs == 0
