"""Regenerate the Aesthetic Predictor V2.5 test set in this folder with the official package.

Run it in the reference environment made by ``make_venv.sh`` (aesthetic-predictor-v2-5 2024.12.18.1,
transformers 4.47.1, torch 2.13.0 CPU, Pillow 13.0.0)::

    bash tests/data/laion-aesthetic-v2.5/make_venv.sh /work/venvs/aes25
    /work/venvs/aes25/bin/python tests/data/laion-aesthetic-v2.5/generate.py

Writes ``model/`` (a tiny seeded random SigLIP in the layout of ``google/siglip-so400m-patch14-384``
and a head in the layout of ``aesthetic_predictor_v2_5.pth``), ``images/`` (synthetic images that
stress the preprocessing), ``cases.jsonl`` (what the official code returns for each) and
``set.json``. See README.md. This file contains none of the package's code: it imports and calls it.
"""

from __future__ import annotations

import io
import json
import platform
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
from PIL import Image

import aesthetic_predictor_v2_5
from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Head, convert_v2_5_from_siglip

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
IMAGES = HERE / "images"
SEED = 20241218

# The published backbone's architecture at a tiny width and depth. image_size and patch_size are
# so400m's (384 px, 14 px patches: a 27x27 grid, 729 position embeddings), so the processor's
# 384x384 output goes through the same patch grid; the attention-pool head is kept (vision_use_head).
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=384, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16)
HEAD_GAIN = 12.0  # the random head's weights are scaled so that scores spread over a few units around HEAD_BIAS
HEAD_BIAS = 5.5

# preprocessor_config.json of google/siglip-so400m-patch14-384, as published.
PREPROCESSOR_CONFIG = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}


def build_model() -> None:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(SEED)
    config = SiglipConfig(text_config=TEXT, vision_config=VISION)
    model = SiglipModel(config).eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layernorm" in name:  # non-trivial norms (init: weight 1, bias 0)
                if name.endswith("weight"):
                    p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=gen))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.endswith("bias"):  # the init zeroes most biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.save_pretrained(MODEL, safe_serialization=True)
    (MODEL / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")

    torch.manual_seed(SEED + 2)
    head = AestheticPredictorV2_5Head(config.vision_config)  # the official head, sized by hidden_size
    with torch.no_grad():
        for module in head.scoring_head:
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(HEAD_GAIN ** 0.5)
        head.scoring_head[-1].bias.fill_(HEAD_BIAS)
    torch.save(head.state_dict(), MODEL / "aesthetic_predictor_v2_5.pth")  # an OrderedDict, as published


def _pattern(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour gradients, a few discs and noise: content at every scale the resizes touch."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + 2 * y) / 7.0)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * max(w, h)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images() -> list[tuple[str, str]]:
    """Write the images; returns ``(file name, what it stresses)``."""
    rng = np.random.default_rng(SEED)
    IMAGES.mkdir(exist_ok=True)
    out = []

    def save(name, image, what, **kw):
        image.save(IMAGES / name, **kw)
        out.append((name, what))

    rgb = lambda w, h: Image.fromarray(_pattern(w, h, rng), "RGB")  # noqa: E731
    save("landscape.png", rgb(300, 200), "wide RGB, squashed to 384x384 (upscale)")
    save("portrait.jpg", rgb(180, 420), "tall RGB JPEG", quality=90)
    save("native384.png", rgb(384, 384), "already 384x384: no resize")
    save("large.jpg", rgb(2000, 1500), "large JPEG, downscale by 5.2 and 3.9", quality=80)
    save("very_tall.png", rgb(40, 1000), "extreme aspect: height shrinks, width grows (pass order)")
    save("very_wide.png", rgb(1500, 90), "extreme aspect the other way")
    save("small.png", rgb(7, 5), "7x5: strong upscale")
    save("one_pixel.png", rgb(1, 1), "1x1 RGB")
    save("one_row.png", rgb(64, 1), "64x1: height 1")
    save("three_rows.png", rgb(120, 3), "120x3: height 3")
    save("gray.png", Image.fromarray(_pattern(150, 100, rng)[..., 0], "L"), "mode L")
    save("gray_alpha.png", Image.fromarray(_pattern(90, 130, rng)[..., :2].copy(), "LA"), "mode LA")
    save("bilevel.png", rgb(110, 70).convert("1"), "mode 1 (dithered)")
    save("palette.png", rgb(120, 160).quantize(32), "mode P, 32 colours")
    rgba = np.concatenate([_pattern(200, 150, rng), rng.integers(0, 256, (150, 200, 1), dtype=np.uint8)], -1)
    save("rgba.png", Image.fromarray(rgba, "RGBA"), "RGBA with random alpha (dropped by convert)")
    save("cmyk.jpg", rgb(160, 120).convert("CMYK"), "CMYK JPEG", quality=90)
    deep = (_pattern(200, 100, rng)[..., 1].astype(np.uint16) * 257 + rng.integers(0, 257, (100, 200))).astype(np.uint16)
    save("gray16.png", Image.fromarray(deep), "16-bit grayscale PNG (I;16)")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; nobody in the pipeline applies it
    save("exif_rotated.jpg", rgb(240, 160), "EXIF orientation 6 (stored landscape)", quality=90, exif=exif.tobytes())
    return out


def official_score(model, processor, image: Image.Image, **processor_kwargs) -> tuple[float, list[float]]:
    """The README recipe: ``convert("RGB")``, the processor, ``model(pixel_values).logits``."""
    pixel_values = processor(images=image.convert("RGB"), return_tensors="pt", **processor_kwargs).pixel_values
    with torch.inference_mode():
        out = model(pixel_values)
    return float(out.logits.squeeze().float()), [float(v) for v in out.hidden_states[0]]


def main() -> None:
    torch.set_num_threads(1)
    build_model()
    images = make_images()
    model, processor = convert_v2_5_from_siglip(
        predictor_name_or_path=str(MODEL / "aesthetic_predictor_v2_5.pth"),
        encoder_model_name=str(MODEL),
        low_cpu_mem_usage=True,
        trust_remote_code=True,
    )
    assert type(processor).__mro__[1].__name__ == "SiglipImageProcessor"
    assert next(model.parameters()).dtype == torch.float32
    rows = []
    for name, what in images:
        row = {"image": f"images/{name}", "what": what}
        with Image.open(IMAGES / name) as image:
            image.load()
            row["mode"], row["size"] = image.mode, list(image.size)
            try:
                row["score"], row["features"] = official_score(model, processor, image)
            except Exception as exc:  # recorded: the official code cannot score this image
                row["score"], row["reference_error"] = None, f"{type(exc).__name__}: {exc}"
            if image.height in (1, 3) or image.width in (1, 3):
                # transformers guesses channels-first for an (H, W, 3) array with H in (1, 3) (ambiguous
                # shape); the same official call with the layout stated is what the image means
                score, feats = official_score(model, processor, image, input_data_format="channels_last")
                row["score_channels_last"], row["features_channels_last"] = score, feats
        rows.append(row)
    # sensitivity: how far a wrong resize filter (bilinear) moves the scores, vs the 1e-4 tolerance
    gaps = []
    for name, _ in images[:4]:
        with Image.open(IMAGES / name) as image:
            bilinear, _ = official_score(model, processor, image, resample=2)
        ref = next(r["score"] for r in rows if r["image"] == f"images/{name}")
        gaps.append(abs(bilinear - ref) / max(1.0, abs(ref)))
    with open(HERE / "cases.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    meta = {
        "seed": SEED, "vision_config": VISION, "text_config": TEXT, "head_gain": HEAD_GAIN, "head_bias": HEAD_BIAS,
        "aesthetic_predictor_v2_5": getattr(aesthetic_predictor_v2_5, "__version__", "2024.12.18.1"),
        "transformers": transformers.__version__, "torch": torch.__version__, "pillow": PIL.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "dtype": "float32",
        "bilinear_instead_of_bicubic_relative_gap": [round(g, 6) for g in gaps],
    }
    (HERE / "set.json").write_text(json.dumps(meta, indent=1) + "\n")
    for row in rows:
        print(f"{row['image']:28s} {row['mode']:5s} {row['size']} {row['score']} {row.get('score_channels_last', '')} {row.get('reference_error', '')[:80]}")
    print("bilinear gaps", gaps)


if __name__ == "__main__":
    main()
