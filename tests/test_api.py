"""Registry, input handling, errors and offline behaviour of the public API."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import prefscore
from conftest import assert_close_paths, shared_fixture
from prefscore.images import find_images, load_image


def test_registry_lists_every_metric_with_its_facts():
    specs = {s.name: s for s in prefscore.list_metrics()}
    for name in ("laion-aesthetic", "laion-aesthetic-v1", "clip-iqa", "hpsv2", "hpsv2.1", "pickscore", "clipscore",
                 "imagereward", "q-align"):
        spec = specs[name]
        assert spec.inputs in ("image", "image+prompt")
        assert spec.default_model and spec.weights_license and spec.strength and spec.caveat
        lo, hi = spec.output_range
        assert lo < hi
    assert specs["hpsv2"].prompt_aware and not specs["laion-aesthetic"].prompt_aware
    assert specs["clip-iqa"].output_range == (0.0, 1.0)
    assert "non-commercial" in specs["q-align"].weights_license
    assert "prompt" in specs["laion-aesthetic"].caveat
    assert "hacking" in specs["imagereward"].caveat
    assert prefscore.get_spec("HPS").name == "hpsv2"  # alias, case-insensitive
    d = specs["laion-aesthetic"].as_dict()
    assert d["output_range"] == ["-inf", "inf"] and "entry" not in d


def test_unknown_metric_suggests_names():
    with pytest.raises(prefscore.UnknownMetricError, match="Did you mean 'pickscore'"):
        prefscore.load("pickscor")


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="no option"):
        prefscore.load("pickscore", model="x", colour="red")


@pytest.fixture(scope="module")
def hps_metric():
    return prefscore.load("hpsv2", model=shared_fixture("hpsv2") / "model")


def test_prompt_errors(hps_metric):
    img = shared_fixture("hpsv2") / "images" / "exact.png"
    with pytest.raises(prefscore.PromptError, match="needs|prompt"):
        hps_metric.score([img])
    with pytest.raises(prefscore.PromptError, match="2 prompts for 1 images"):
        hps_metric.score([img], ["a", "b"])
    with pytest.raises(prefscore.PromptError, match="prompt #0"):
        hps_metric.score([img], [None])
    aesthetic = prefscore.load("laion-aesthetic", model=shared_fixture("laion-aesthetic") / "model")
    with pytest.raises(prefscore.PromptError, match="takes no prompt"):
        aesthetic.score([img], "a cat")
    with pytest.raises(prefscore.PromptError):
        aesthetic.compare([img, img], "a cat")


def test_prompt_list_equals_per_image_calls(hps_metric):
    root = shared_fixture("hpsv2")
    imgs = [root / "images" / n for n in ("exact.png", "gray.png", "tiny.png")]
    prompts = ["a red fox", "a blue car", "a red fox"]
    batch = hps_metric.score(imgs, prompts)
    single = [hps_metric.score(i, p) for i, p in zip(imgs, prompts)]
    assert_close_paths(batch, single)  # one batch vs three single calls


def test_compare_is_softmax_with_training_temperature(hps_metric):
    root = shared_fixture("hpsv2")
    imgs = [root / "images" / n for n in ("exact.png", "gray.png", "tiny.png")]
    s = hps_metric.score(imgs, "a red fox")
    tau = 1 / math.exp(float(hps_metric.clip.logit_scale))
    p = hps_metric.compare(imgs, "a red fox")
    e = np.exp((s - s.max()) / tau)
    assert np.allclose(p, e / e.sum(), atol=1e-9)
    p2 = hps_metric.compare(imgs[:2], "a red fox", temperature=0.5)
    s2 = hps_metric.score(imgs[:2], "a red fox")  # the same two-image batch as compare's
    assert p2[0] == pytest.approx(1 / (1 + math.exp(-(s2[0] - s2[1]) / 0.5)))  # Bradley-Terry for two


def test_bad_images_never_lose_the_others(tmp_path, hps_metric):
    root = shared_fixture("hpsv2")
    good = root / "images" / "exact.png"
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    data = (root / "images" / "large.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    items = [good, tmp_path / "empty.png", tmp_path / "text.png", tmp_path / "cut.jpg", tmp_path / "missing.png", good]
    with pytest.raises(prefscore.ScoringError) as info:
        hps_metric.score(items, "a cat")
    err = info.value
    reasons = {i: why for i, _, why in err.errors}
    assert set(reasons) == {1, 2, 3, 4}
    assert "empty" in reasons[1] and "not an image" in reasons[2] and "truncated" in reasons[3] and "not found" in reasons[4]
    assert "empty.png" in str(err) and "cut.jpg" in str(err)
    assert np.isfinite(err.scores[[0, 5]]).all() and np.isnan(err.scores[1:5]).all()
    assert_close_paths(err.scores[0], hps_metric.score(good, "a cat"))  # in a batch vs alone
    nan = hps_metric.score(items, "a cat", on_error="nan")
    assert np.array_equal(np.isnan(nan), np.isnan(err.scores))


def test_image_inputs_and_modes():
    arr = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(12, 10, 3)
    assert load_image(arr).mode == "RGB"
    assert load_image(arr[:, :, 0]).mode == "L"
    assert load_image(np.dstack([arr, arr[:, :, :1]])).mode == "RGBA"
    with pytest.raises(prefscore.ImageError, match="dtype float32"):
        load_image(arr.astype(np.float32))
    with pytest.raises(prefscore.ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(prefscore.ImageError, match="unsupported image mode 'F'"):
        load_image(Image.new("F", (4, 4)))
    with pytest.raises(prefscore.ImageError, match="unsupported input type"):
        load_image(3.5)
    with pytest.raises(prefscore.ImageError, match="empty data"):
        load_image(b"")


def test_find_images_reports_non_images(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "sub" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "b.JPG")
    (tmp_path / "caption.txt").write_text("x")
    (tmp_path / ".hidden.png").write_text("x")
    images, skipped = find_images([tmp_path])
    assert [p.name for p in images] == ["b.JPG", "a.png"]
    assert [p.name for p in skipped] == ["caption.txt"]
    images, _ = find_images([tmp_path / "caption.txt"])  # named explicitly: kept, so it gets an error row
    assert images == [tmp_path / "caption.txt"]


def test_offline_hub_source_fails_at_once_with_help():
    with pytest.raises(prefscore.ModelSourceError) as info:
        prefscore.load("hpsv2")
    message = str(info.value)
    assert "xswu/HPSv2" in message and "--model DIR" in message and "offline" in message


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(prefscore.ModelSourceError, match="no hpsv2 checkpoint found"):
        prefscore.load("hpsv2", model=tmp_path)


def test_checkpoint_of_wrong_shape_names_the_tensor(tmp_path):
    root = shared_fixture("hpsv2")
    sd = torch.load(root / "model" / "HPS_v2_compressed.pt", map_location="cpu", weights_only=True)
    sd["state_dict"]["visual.proj"] = sd["state_dict"]["visual.proj"][:, :32]
    torch.save(sd, tmp_path / "HPS_v2_compressed.pt")
    shutil.copy(root / "model" / "bpe_simple_vocab_16e6.txt.gz", tmp_path)
    with pytest.raises(prefscore.CheckpointError, match="visual.proj"):
        prefscore.load("hpsv2", model=tmp_path)


def test_aesthetic_head_of_wrong_width_names_the_tensor(tmp_path):
    root = shared_fixture("laion-aesthetic") / "model"
    shutil.copy(root / "clip.pt", tmp_path)
    head = torch.load(root / "aesthetic-mlp.pth", map_location="cpu", weights_only=True)
    head["layers.0.weight"] = torch.zeros(1024, 768)
    torch.save(head, tmp_path / "aesthetic-mlp.pth")
    with pytest.raises(prefscore.CheckpointError, match=r"layers.0.weight.*768-d features.*64-d"):
        prefscore.load("laion-aesthetic", model=tmp_path)


def test_dtype_option_runs_in_bfloat16():
    root = shared_fixture("laion-aesthetic")
    m32 = prefscore.load("laion-aesthetic-v1", model=root / "model")
    m16 = prefscore.load("laion-aesthetic-v1", model=root / "model", dtype="bfloat16")
    img = root / "images" / "landscape.png"
    assert abs(m16.score(img) - m32.score(img)) < 0.05
    with pytest.raises(ValueError, match="unknown dtype"):
        prefscore.load("laion-aesthetic-v1", model=root / "model", dtype="int3")
