"""Every case of the shared parity fixtures, through the public API (load -> score / compare)."""

from __future__ import annotations

import numpy as np
import pytest

import prefscore
from conftest import assert_close_paths, parity_tol, read_jsonl, shared_fixture



# -- LAION aesthetic -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def laion():
    return shared_fixture("laion-aesthetic")


@pytest.mark.parametrize("name,key", [("laion-aesthetic", "score_mlp"), ("laion-aesthetic-v1", "score_linear")])
def test_laion_aesthetic(laion, name, key):
    cases = read_jsonl(laion / "cases.jsonl")
    metric = prefscore.load(name, model=laion / "model")
    scores = metric.score([laion / c["image"] for c in cases], batch_size=3)
    assert scores.shape == (len(cases),)
    for case, got in zip(cases, scores):
        assert abs(got - case[key]) <= parity_tol(case[key]), (case["image"], got, case[key])


def test_laion_single_image_and_inputs(laion):
    """A single path, a PIL image and a uint8 array of the same RGB image give the same score."""
    from PIL import Image

    metric = prefscore.load("laion-aesthetic", model=laion / "model")
    path = laion / "images" / "landscape.png"
    image = Image.open(path)
    ref = metric.score(path)
    assert np.ndim(ref) == 0
    assert metric.score([image])[0] == ref  # the same pixels through the same one-image call
    assert metric.score([np.asarray(image.convert("RGB"))])[0] == ref


# -- HPS v2 / v2.1 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hps():
    return shared_fixture("hpsv2")


@pytest.mark.parametrize("name,checkpoint", [("hpsv2", "model/HPS_v2_compressed.pt"), ("hpsv2.1", "model/HPS_v2.1_compressed.pt")])
def test_hpsv2(hps, name, checkpoint):
    cases = [c for c in read_jsonl(hps / "cases.jsonl") if c["checkpoint"] == checkpoint]
    metric = prefscore.load(name, model=hps / "model")
    scores = metric.score([hps / c["image"] for c in cases], [c["prompt"] for c in cases], batch_size=8)
    compared = 0
    for case, got in zip(cases, scores):
        assert np.isfinite(got)  # reference_error cases (RGBA) are scored too, with alpha dropped
        if "score" in case:
            assert abs(got - case["score"]) <= parity_tol(case["score"]), (case["image"], case["prompt"][:30], got, case["score"])
            compared += 1
    assert compared == 42


def test_hps_tokenizer_matches_reference_ids(hps):
    import json

    from prefscore.backbones.tokenizer import OpenCLIPTokenizer

    tokens = json.loads((hps / "tokens.json").read_text())
    for source in ("bpe_simple_vocab_16e6.txt.gz", "tokenizer/merges.txt"):
        tok = OpenCLIPTokenizer.from_file(hps / "model" / source)
        for entry in tokens["prompts"]:
            assert tok(entry["prompt"])[0].tolist() == entry["ids"], entry["prompt"]
        for probe in tokens["hf_tokenizer_check"]["probes_not_scored"]:
            ids = tok(probe["prompt"])[0].tolist()
            n = len(probe["reference_ids"])
            assert ids[:n] == probe["reference_ids"], probe["prompt"]


def test_hps_pixels_match_reference(hps):
    """The preprocessed tensor equals the reference ``preprocess_val`` output."""
    from PIL import Image

    from prefscore.preprocess import hps_pad

    pixels = np.load(hps / "pixels.npz")
    for key in pixels.files:
        ref = pixels[key]
        if ref.shape[0] != 3:
            continue  # RGBA: the reference keeps 4 channels and then fails
        name = key if key.startswith("images/") else f"images/{key}"
        got = hps_pad(Image.open(hps / name)).numpy()
        assert np.abs(got - ref).max() < 1e-5, key


# -- PickScore -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pick():
    return shared_fixture("pickscore")


def test_pickscore(pick):
    metric = prefscore.load("pickscore", model=pick / "model")
    cases = read_jsonl(pick / "cases.jsonl")
    assert len(cases) == 6
    for case in cases:
        images = [pick / i for i in case["images"]]
        scores = metric.score(images, case["prompt"])
        probs = metric.compare(images, case["prompt"])
        ids = metric.tokenizer(case["prompt"], truncation=True, max_length=77)["input_ids"]
        assert ids == case["input_ids"], case["prompt"]
        for got, ref in zip(scores, case["scores"]):
            assert abs(got - ref) <= parity_tol(ref), (case["prompt"], got, ref)
        assert np.abs(probs - np.asarray(case["probs"])).max() <= 1e-4
        assert probs.sum() == pytest.approx(1.0)


# -- CLIP-IQA (HF branch) ------------------------------------------------------------------------
def test_clip_iqa_all_axes(tmp_path):
    root = shared_fixture("clip-iqa")
    from prefscore.metrics.clipiqa import BUILTIN_PROMPTS

    custom = ("a sharp photo.", "a blurry photo.")
    metric = prefscore.load("clip-iqa", model=root / "model", prompts=tuple(BUILTIN_PROMPTS) + (custom,))
    cases = read_jsonl(root / "cases.jsonl")
    scores = metric.score([root / c["image"] for c in cases], batch_size=4)
    keys = list(BUILTIN_PROMPTS) + ["custom:a sharp photo.|a blurry photo."]
    assert scores.shape == (len(cases), 17)
    assert list(metric.output_names) == keys
    ref = np.array([[c["scores_data_range_1"][k] for k in keys] for c in cases])
    assert np.abs(scores - ref).max() <= 1e-4


def test_clip_iqa_single_axis_and_order():
    root = shared_fixture("clip-iqa")
    cases = read_jsonl(root / "cases.jsonl")
    images = [root / c["image"] for c in cases]
    one = prefscore.load("clip-iqa", model=root / "model")
    q = one.score(images)
    assert q.shape == (len(cases),)
    assert np.abs(q - [c["scores_data_range_1"]["quality"] for c in cases]).max() <= 1e-4
    two = prefscore.load("clip-iqa", model=root / "model", prompts=("sharpness", "quality"))
    s = two.score(images)
    assert two.output_names == ("sharpness", "quality")
    assert_close_paths(s[:, 1], q)  # two axes vs one: another text batch in the similarity matmul
