"""ImageReward: parity with the official package on the shared fixture, through the public API,
plus rank(), compare(), tokenisation, checkpoint and input errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import prefscore
from conftest import parity_tol, read_jsonl, shared_fixture
from prefscore.metrics.imagereward import REWARD_MEAN, REWARD_STD



@pytest.fixture(scope="module")
def fixture():
    return shared_fixture("imagereward")


@pytest.fixture(scope="module")
def metric(fixture):
    return prefscore.load("imagereward", model=fixture / "model")


def test_every_case_matches_official_score(fixture, metric):
    cases = read_jsonl(fixture / "cases.jsonl")
    assert len(cases) == 40
    # Mixed prompts in one batch (batch size 16 spans prompt groups) must not change anything.
    scores = metric.score([fixture / c["image"] for c in cases], [c["prompt"] for c in cases], batch_size=16)
    assert scores.shape == (40,)
    for case, got in zip(cases, scores):
        assert abs(got - case["reward"]) <= parity_tol(case["reward"]), (case["image"], case["prompt"][:30], got, case["reward"])


def test_rank_matches_official_inference_rank(fixture, metric):
    groups = json.loads((fixture / "ranks.json").read_text())
    assert len(groups) == 5
    for group in groups:
        ranks, rewards = metric.rank(group["prompt"], [fixture / p for p in group["images"]])
        assert ranks == group["ranks"], group["prompt"][:30]
        assert all(isinstance(r, int) for r in ranks) and all(isinstance(r, float) for r in rewards)
        for got, ref in zip(rewards, group["rewards"]):
            assert abs(got - ref) <= parity_tol(ref)


def test_single_image_score_and_rank(fixture, metric):
    case = read_jsonl(fixture / "cases.jsonl")[1]
    got = metric.score(fixture / case["image"], case["prompt"])
    assert np.ndim(got) == 0 and abs(float(got) - case["reward"]) <= parity_tol(case["reward"])
    ranks, rewards = metric.rank(case["prompt"], [fixture / case["image"]])
    assert ranks == [1] and rewards == [pytest.approx(float(got), abs=1e-6)]


def test_tokenisation_matches_reference_ids(fixture, metric):
    path = fixture / "tokens.json"
    assert path.is_file(), "tokens.json is part of the fixture"
    entries = json.loads(path.read_text())
    assert len(entries) == 5
    for entry in entries:
        ids, mask = metric.tokenize([entry["prompt"]])
        assert ids[0].tolist() == entry["input_ids"], entry["prompt"]
        assert mask[0].tolist() == entry["attention_mask"], entry["prompt"]
    # [CLS] stays first (ImageReward's score never swaps in [ENC]); BLIP's two tokens are known.
    assert all(e["input_ids"][0] == 101 for e in entries)
    assert metric.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert len(metric.tokenizer) == 30524


def test_long_prompt_is_truncated_like_the_reference(fixture, metric):
    entries = json.loads((fixture / "tokens.json").read_text())
    long = max(entries, key=lambda e: len(e["prompt"]))
    ids, mask = metric.tokenize([long["prompt"] + " and many more words after the cut"])
    assert ids.shape == (1, 35) and int(mask.sum()) == 35 and ids[0, -1].item() == 102
    img = fixture / "images" / "exact.png"
    a = metric.score([img], long["prompt"])[0]
    b = metric.score([img], long["prompt"] + " and many more words after the cut")[0]
    assert a == pytest.approx(b, abs=1e-6)  # everything past 35 ids is dropped


def test_compare_is_bradley_terry_on_the_raw_reward(fixture, metric):
    prompt = "a fox in a snowy forest, digital art"
    images = [fixture / "images" / n for n in ("landscape.png", "portrait.png", "exact.png")]
    assert metric.preference_temperature() == pytest.approx(1 / 1.0333394966054072)
    s = metric.score(images, prompt)
    raw = s * REWARD_STD + REWARD_MEAN  # the MLP output the model was trained on
    p = metric.compare(images, prompt)
    expected = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-9)
    p2 = metric.compare(images[:2], prompt)
    raw2 = metric.score(images[:2], prompt) * REWARD_STD + REWARD_MEAN  # the same two-image batch as compare's
    assert p2[0] == pytest.approx(1 / (1 + math.exp(-(raw2[0] - raw2[1]))), rel=1e-9)


def test_bad_images_do_not_lose_other_items(fixture, metric, tmp_path):
    cases = read_jsonl(fixture / "cases.jsonl")
    picked = [cases[0], cases[9], cases[18], cases[27]]  # four different prompts
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((fixture / "images" / "exact.png").read_bytes()[:300])
    items = [fixture / picked[0]["image"], corrupt, fixture / picked[1]["image"], fixture / picked[2]["image"],
             tmp_path / "missing.png", fixture / picked[3]["image"]]
    prompts = [picked[0]["prompt"], "x", picked[1]["prompt"], picked[2]["prompt"], "y", picked[3]["prompt"]]
    out = metric.score(items, prompts, batch_size=4, on_error="nan")
    assert np.isnan(out[1]) and np.isnan(out[4])
    for i, case in zip((0, 2, 3, 5), picked):
        assert abs(out[i] - case["reward"]) <= parity_tol(case["reward"])
    with pytest.raises(prefscore.ScoringError) as info:
        metric.score(items, prompts, batch_size=4)
    assert [e[0] for e in info.value.errors] == [1, 4]
    assert np.isfinite(info.value.scores[[0, 2, 3, 5]]).all()
    ranks, rewards = metric.rank(picked[0]["prompt"], [corrupt, fixture / "images" / "exact.png"], on_error="nan")
    assert ranks == [2, 1] and math.isnan(rewards[0])


def test_missing_prompt_is_a_prompt_error(fixture, metric):
    img = fixture / "images" / "exact.png"
    with pytest.raises(prefscore.PromptError, match="prompt"):
        metric.score([img])
    with pytest.raises(prefscore.PromptError, match="prompt #1"):
        metric.score([img, img], ["a fox", None])
    with pytest.raises(prefscore.PromptError):
        metric.rank(None, [img])


def test_forward_is_differentiable_in_pixels(fixture, metric):
    from PIL import Image

    pixels = metric.preprocess(Image.open(fixture / "images" / "exact.png"), "exact.png")[None].requires_grad_(True)
    out = metric.forward(pixels, ["a fox in a snowy forest, digital art"])
    assert out.shape == (1,) and out.requires_grad
    out.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def _model_copy(fixture, tmp_path, edit=None):
    """A copy of the fixture model directory, its checkpoint optionally edited."""
    root = tmp_path / "model"
    root.mkdir(parents=True)
    shutil.copy(fixture / "model" / "med_config.json", root)
    shutil.copytree(fixture / "model" / "tokenizer", root / "tokenizer")
    sd = torch.load(fixture / "model" / "ImageReward.pt", map_location="cpu", weights_only=True)
    if edit is not None:
        edit(sd)
    torch.save(sd, root / "ImageReward.pt")
    return root


@pytest.mark.parametrize("key,shape", [
    ("blip.text_encoder.encoder.layer.1.crossattention.self.key.weight", (128, 64)),
    ("blip.visual_encoder.blocks.1.mlp.fc1.weight", (500, 128)),
    ("mlp.layers.0.weight", (1024, 96)),
])
def test_wrong_shape_names_the_tensor(fixture, tmp_path, key, shape):
    def edit(sd):
        sd[key] = torch.zeros(shape)

    root = _model_copy(fixture, tmp_path, edit)
    with pytest.raises(prefscore.CheckpointError, match=rf"'{key}' has shape {tuple(shape)}".replace("(", r"\(").replace(")", r"\)")):
        prefscore.load("imagereward", model=root)


def test_missing_tensor_and_layer_count_mismatch(fixture, tmp_path):
    def drop(sd):
        del sd["blip.text_encoder.encoder.layer.0.output.dense.bias"]

    with pytest.raises(prefscore.CheckpointError, match="blip.text_encoder.encoder.layer.0.output.dense.bias"):
        prefscore.load("imagereward", model=_model_copy(fixture, tmp_path / "a", drop))
    root = _model_copy(fixture, tmp_path / "b")
    cfg = json.loads((root / "med_config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (root / "med_config.json").write_text(json.dumps(cfg))
    with pytest.raises(prefscore.CheckpointError, match="2 text encoder layers.*says 3"):
        prefscore.load("imagereward", model=root)


def test_offline_default_source_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(prefscore.ModelSourceError, match="THUDM/ImageReward.*offline"):
        prefscore.load("imagereward")


def test_tokenizer_falls_back_to_the_hub_and_accepts_an_option(fixture, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    root = _model_copy(fixture, tmp_path)
    shutil.rmtree(root / "tokenizer")
    with pytest.raises(prefscore.ModelSourceError, match="bert-base-uncased.*offline"):
        prefscore.load("imagereward", model=root)
    metric = prefscore.load("imagereward", model=root, tokenizer=str(fixture / "model" / "tokenizer"))
    case = read_jsonl(fixture / "cases.jsonl")[5]
    assert abs(metric.score([fixture / case["image"]], case["prompt"])[0] - case["reward"]) <= parity_tol(case["reward"])


def test_unknown_option_is_rejected(fixture):
    with pytest.raises(TypeError, match="no option.*colour.*checkpoint, tokenizer"):
        prefscore.load("imagereward", model=fixture / "model", colour="red")
