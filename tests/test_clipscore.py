"""CLIPScore on a tiny HF CLIP, against an explicit transformers computation of w * max(cos, 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import prefscore
from conftest import shared_fixture


def _explicit_cos(model_dir, image_path, text):
    from transformers import CLIPModel, CLIPTokenizer

    from prefscore.backbones.loading import load_processor_config
    from prefscore.preprocess import hf_clip

    model = CLIPModel.from_pretrained(model_dir).eval()
    tok = CLIPTokenizer.from_pretrained(model_dir)
    cfg = load_processor_config(model_dir)
    pixels = hf_clip(Image.open(image_path), cfg).unsqueeze(0)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(**tok([text], return_tensors="pt"))
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return torch.nn.functional.cosine_similarity(img, txt).item()


def test_clipscore_formula_and_options():
    root = shared_fixture("clip-iqa")
    model_dir = root / "model"
    images = [root / "images" / n for n in ("landscape.png", "gray.png", "exact.png", "oddcrop.png")]
    prompts = ["a red fox", "a city at night", "a bowl of fruit", "two dogs"]
    metric = prefscore.load("clipscore", model=model_dir)
    scores = metric.score(images, prompts)
    cos = np.array([_explicit_cos(model_dir, i, p) for i, p in zip(images, prompts)])
    assert np.allclose(scores, 2.5 * np.maximum(cos, 0), atol=1e-5)
    hundred = prefscore.load("clipscore", model=model_dir, w=100).score(images, prompts)
    assert np.allclose(hundred, 100 * np.maximum(cos, 0), atol=1e-3)
    prefixed = prefscore.load("clipscore", model=model_dir, prefix="A photo depicts").score(images[:1], prompts[0])
    expected = 2.5 * max(_explicit_cos(model_dir, images[0], "A photo depicts a red fox"), 0)
    assert prefixed == pytest.approx(expected, abs=1e-5)
