"""CLIP-IQA with the original RN50 backbone against numbers from OpenAI's official CLIP code.

The tiny checkpoint, images and expected outputs are in tests/data/clipiqa_rn50 (see its README).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prefscore
from prefscore.backbones.clip import read_state_dict
from prefscore.backbones.resnet import ModifiedResNet, ResNetConfig, resnet_from_state_dict
from prefscore.errors import CheckpointError, ModelSourceError, PromptError, ScoringError
from prefscore.metrics.clipiqa_rn50 import DEFAULT_SOURCE, TOKENIZER_SOURCE

from conftest import assert_close_paths, shared_fixture

DATA = Path(__file__).parent / "data" / "clipiqa_rn50"
EXPECTED = json.loads((DATA / "expected.json").read_text())
IMAGES = list(EXPECTED["images"])
TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def metric():
    return prefscore.load("clip-iqa", model=str(DATA), backbone="rn50", prompts=("quality", "sharpness"))


def _expected_scores(axes):
    return np.array([[EXPECTED["images"][name]["scores"][a] for a in axes] for name in IMAGES])


def _model_dir(tmp_path: Path, state: dict, name: str = "RN50.pt") -> Path:
    for f in TOKENIZER_FILES:
        shutil.copy(DATA / f, tmp_path / f)
    torch.save(state, tmp_path / name)
    return tmp_path


def test_scores_match_official(metric):
    """The probabilities of prefscore.load(...) equal those computed with OpenAI's model code."""
    assert metric.output_names == ("quality", "sharpness")
    # one image per batch: full-resolution images of different sizes cannot share a tensor
    scores = metric.score([DATA / n for n in IMAGES], batch_size=1)
    assert scores.shape == (len(IMAGES), 2)
    np.testing.assert_allclose(scores, _expected_scores(["quality", "sharpness"]), rtol=0, atol=ATOL)
    # the images do differ, well beyond the tolerance
    assert np.ptp(scores[:, 0]) > 100 * ATOL


def test_image_features_match_official(metric):
    backbone = metric.backbone
    for name in IMAGES:
        image = Image.open(DATA / name)
        pixels = backbone.preprocess(image, name)
        assert pixels.shape == (3, image.height, image.width)  # full resolution, no resize
        with torch.no_grad():
            features = backbone.image_features(pixels[None])[0]
        expected = torch.tensor(EXPECTED["images"][name]["features_no_pos"])
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=ATOL)


def test_positional_embedding_path_matches_official_encode_image(metric):
    """With its positional embedding at the native 64x64 the tower is OpenAI's encode_image."""
    tower = metric.backbone.visual
    assert tower.config == ResNetConfig(layers=(1, 2, 1, 1), width=8, heads=4, output_dim=32, image_size=64)
    pixels = metric.backbone.preprocess(Image.open(DATA / "native64.png"), "native64.png")[None]
    with torch.no_grad():
        with_pos = tower(pixels, pos_embedding=True)[0]
        without = tower(pixels, pos_embedding=False)[0]
    torch.testing.assert_close(with_pos, torch.tensor(EXPECTED["images"]["native64.png"]["features_official_encode_image"]),
                               rtol=1e-5, atol=ATOL)
    assert (with_pos - without).abs().max() > 1e-3  # the table matters, so dropping it is tested
    wide = metric.backbone.preprocess(Image.open(DATA / "wide.png"), "wide.png")[None]
    with pytest.raises(ValueError, match="2x2 feature map"):
        tower(wide, pos_embedding=True)


def test_text_features_and_tokens_match_official(metric):
    backbone = metric.backbone
    ids = backbone.token_ids(EXPECTED["sentences"])
    assert ids.shape == (32, 77)
    assert [row[row > 0].tolist() for row in ids] == EXPECTED["token_ids"]
    with torch.no_grad():
        features = backbone.text_features(EXPECTED["sentences"])
    torch.testing.assert_close(features, torch.tensor(EXPECTED["text_features"]), rtol=1e-5, atol=ATOL)


def test_tiny_tokenizer_pieces_equal_the_real_clip_vocabulary(metric):
    """The restricted test vocabulary splits every built-in sentence as CLIP's full vocabulary does."""
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained(str(shared_fixture("clip-iqa") / "model"))
    tiny = metric.backbone.tokenizer
    for sentence in EXPECTED["sentences"]:
        assert tiny.convert_ids_to_tokens(tiny(sentence)["input_ids"]) == real.convert_ids_to_tokens(real(sentence)["input_ids"])


def test_all_builtin_axes():
    axes = tuple(EXPECTED["pairs"])
    metric = prefscore.load("clip-iqa", model=str(DATA), backbone="rn50", prompts=axes)
    scores = metric.score([DATA / n for n in IMAGES], batch_size=1)
    np.testing.assert_allclose(scores, _expected_scores(axes), rtol=0, atol=ATOL)


def test_same_size_batch_equals_single_images(metric):
    image = Image.open(DATA / "native64.png")
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    batch = metric.score([image, flipped], batch_size=2)
    single = np.stack([metric.score(image), metric.score(flipped)])
    assert_close_paths(batch, single)  # one batch vs single calls
    np.testing.assert_allclose(batch[0], _expected_scores(["quality", "sharpness"])[0], atol=ATOL)


def test_open_clip_safetensors_layout(tmp_path):
    """The open_clip file name/format of the hub mirror (timm/resnet50_clip.openai) gives the same numbers."""
    from safetensors.torch import save_file

    for f in TOKENIZER_FILES:
        shutil.copy(DATA / f, tmp_path / f)
    save_file(read_state_dict(DATA / "RN50.pt"), str(tmp_path / "open_clip_model.safetensors"))
    metric = prefscore.load("clip-iqa", model=str(tmp_path), backbone="rn50", prompts=("quality", "sharpness"))
    scores = metric.score([DATA / n for n in IMAGES[:3]], batch_size=1)
    np.testing.assert_allclose(scores, _expected_scores(["quality", "sharpness"])[:3], rtol=0, atol=ATOL)


def test_wrong_shape_visual_tensor_is_named(tmp_path):
    state = read_state_dict(DATA / "RN50.pt")
    state["visual.layer2.0.conv2.weight"] = torch.zeros(16, 16, 1, 1, dtype=torch.float16)
    model = _model_dir(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"visual\.layer2\.0\.conv2\.weight.*\(16, 16, 1, 1\).*\(16, 16, 3, 3\)"):
        prefscore.load("clip-iqa", model=str(model), backbone="rn50")


def test_wrong_shape_text_tensor_is_named(tmp_path):
    state = read_state_dict(DATA / "RN50.pt")
    state["transformer.resblocks.0.attn.out_proj.weight"] = torch.zeros(64, 32, dtype=torch.float16)
    with pytest.raises(CheckpointError, match=r"out_proj\.weight.*\(64, 32\)"):
        prefscore.load("clip-iqa", model=str(_model_dir(tmp_path, state)), backbone="rn50")


def test_missing_tensor_and_projection_mismatch(tmp_path):
    state = read_state_dict(DATA / "RN50.pt")
    del state["visual.attnpool.c_proj.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['visual\.attnpool\.c_proj\.bias'\]"):
        resnet_from_state_dict(state, "tiny")
    state = read_state_dict(DATA / "RN50.pt")
    state["text_projection"] = torch.zeros(64, 16, dtype=torch.float16)
    with pytest.raises(CheckpointError, match=r"'text_projection' projects to 16 but 'visual\.attnpool\.c_proj' to 32"):
        prefscore.load("clip-iqa", model=str(_model_dir(tmp_path, state)), backbone="rn50")
    with pytest.raises(CheckpointError, match="not an OpenAI/open_clip ResNet CLIP checkpoint"):
        resnet_from_state_dict({k: v for k, v in state.items() if not k.startswith("visual.attnpool.")}, "tiny")


def test_too_small_image_is_reported_not_fatal(metric):
    small = Image.new("RGB", (30, 64), (120, 30, 200))
    assert ModifiedResNet.feature_size(30) == 0 and ModifiedResNet.feature_size(31) == 1
    assert ModifiedResNet.feature_size(224) == 7
    with pytest.raises(ScoringError) as info:
        metric.score([small, DATA / "min31.png"], batch_size=1)
    assert "30x64" in str(info.value) and "at least 31 px" in str(info.value)
    scores = info.value.scores
    assert np.isnan(scores[0]).all()
    np.testing.assert_allclose(scores[1], _expected_scores(["quality", "sharpness"])[IMAGES.index("min31.png")], atol=ATOL)


def test_prompt_longer_than_context_is_rejected():
    with pytest.raises(PromptError, match="at most 77"):
        prefscore.load("clip-iqa", model=str(DATA), backbone="rn50", prompts=(("x " * 100, "y."),))


@pytest.fixture()
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_default_source_is_the_open_clip_mirror(empty_hub_cache):
    with pytest.raises(ModelSourceError, match=DEFAULT_SOURCE):
        prefscore.load("clip-iqa", backbone="rn50")


def test_tokenizer_falls_back_to_openai_clip_vit_b16(tmp_path, empty_hub_cache):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(DATA / "RN50.pt", model / "RN50.pt")
    with pytest.raises(ModelSourceError, match=TOKENIZER_SOURCE):
        prefscore.load("clip-iqa", model=str(model), backbone="rn50")
