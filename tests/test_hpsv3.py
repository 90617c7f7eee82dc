"""HPSv3 against numbers from the official package (hpsv3 1.0.0, transformers 4.45.2).

The tiny model in the published layout, the images and the recorded rewards are in tests/data/hpsv3 (see its
README); the parity tolerance is the project's ``1e-4 * max(1, |ref|)``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import prefscore
from prefscore.cli import app
from prefscore.backbones.qwen2vl import smart_resize
from prefscore.metrics.hpsv3 import (CHECKPOINT, PIXELS, preference_probabilities, user_text)

from conftest import parity_tol, read_jsonl

DATA = Path(__file__).parent / "data" / "hpsv3"
MODEL = DATA / "model"
IMAGES = DATA / "images"
CASES = read_jsonl(DATA / "cases.jsonl")
SMALL = ["config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json"]



def _expected(case: dict) -> tuple[float, float]:
    if "error" in case:  # the official code refuses it; its computation with the guard lifted
        return case["unguarded_mu"], case["unguarded_sigma"]
    return case["mu"], case["sigma"]


@pytest.fixture(scope="module")
def metric():
    torch.set_num_threads(1)
    return prefscore.load("hpsv3", model=str(MODEL))


def hpsv3_size(h: int, w: int) -> tuple[int, int]:
    """HPSv3's resize: qwen_vl_utils' arithmetic at min_pixels = max_pixels = 256*28*28."""
    return smart_resize(h, w, min_pixels=PIXELS, max_pixels=PIXELS)


def test_every_case_matches_the_official_package(metric):
    """All cases in one call (batched by the engine, images of one size share a forward)."""
    out = metric.score([IMAGES / c["image"] for c in CASES], [c["prompt"] for c in CASES], batch_size=4)
    assert out.shape == (len(CASES), 2) and metric.output_names == ("mu", "sigma")
    for row, case in zip(out, CASES):
        mu, sigma = _expected(case)
        assert abs(row[0] - mu) <= parity_tol(mu), case["id"]
        assert abs(row[1] - sigma) <= parity_tol(sigma), case["id"]
    # the cases differ well beyond the tolerance (images and prompts both move the reward)
    assert np.ptp(out[:, 0]) > 1.0 and np.ptp(out[:, 1]) > 1.0


def test_one_image_at_a_time_and_the_official_batch(metric):
    case = CASES[0]
    single = metric.score(IMAGES / case["image"], case["prompt"])
    assert single.shape == (2,) and abs(single[0] - case["mu"]) <= parity_tol(case["mu"])
    batch = json.loads((DATA / "batch.json").read_text())
    out = metric.score([IMAGES / b["image"] for b in batch], [b["prompt"] for b in batch], batch_size=5)
    for row, ref in zip(out, batch):
        assert abs(row[0] - ref["mu"]) <= parity_tol(ref["mu"]) and abs(row[1] - ref["sigma"]) <= parity_tol(ref["sigma"])


def test_the_official_code_refuses_extreme_aspect_ratios_prefscore_scores_them(metric):
    refused = [c for c in CASES if "error" in c]
    assert [c["image"] for c in refused] == ["sliver.png"] and "aspect ratio" in refused[0]["error"]
    with Image.open(IMAGES / "sliver.png") as im:
        assert max(im.size) / min(im.size) > 200
    assert hpsv3_size(300, 1) == (7784, 28)  # the reference's arithmetic, without its guard


def test_cli_scores_with_both_columns(tmp_path):
    picked = [c for c in CASES if c["prompt"] == CASES[0]["prompt"] and "error" not in c][:3]
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["score", *[str(IMAGES / c["image"]) for c in picked], "-m", "hpsv3",
                                      "--model", str(MODEL), "--prompt", picked[0]["prompt"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    for case in picked:
        row = rows[case["image"]]
        assert abs(float(row["hpsv3.mu"]) - case["mu"]) <= parity_tol(case["mu"])
        assert abs(float(row["hpsv3.sigma"]) - case["sigma"]) <= parity_tol(case["sigma"])


def test_bad_images_are_error_rows(metric, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((IMAGES / "wide.png").read_bytes()[:400])
    good = [c for c in CASES if "error" not in c][:3]
    items = [IMAGES / good[0]["image"], corrupt, IMAGES / good[1]["image"], tmp_path / "missing.png",
             IMAGES / good[2]["image"]]
    prompts = [good[0]["prompt"], "x", good[1]["prompt"], "y", good[2]["prompt"]]
    out = metric.score(items, prompts, on_error="nan")
    assert np.isnan(out[[1, 3]]).all()
    for i, case in zip((0, 2, 4), good):
        assert abs(out[i, 0] - case["mu"]) <= parity_tol(case["mu"])
    with pytest.raises(prefscore.ScoringError) as info:
        metric.score(items, prompts)
    assert [e[0] for e in info.value.errors] == [1, 3]


def test_prompt_is_required(metric):
    with pytest.raises(prefscore.PromptError):
        metric.score([IMAGES / "wide.png"])
    with pytest.raises(prefscore.PromptError, match="image token"):
        metric.score([IMAGES / "wide.png"], "a <|image_pad|> here")


def test_prompt_text_is_the_official_template(metric):
    text = metric.tokens.render("a fox")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>\nYou are tasked with evaluating")
    assert text.endswith("Textual prompt - a fox\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>\n\n"
                         "END\n<|im_end|>\n<|im_start|>assistant\n")
    assert user_text("{x}").count("{x}") == 1  # the prompt is not itself formatted
    ids, image_at, reward_at = metric.tokens.ids("a fox")
    assert ids[reward_at] == metric.tokens.reward_id == 714 and ids[image_at] == metric.image_token_id


def test_preprocessing_sizes_and_patches(metric):
    assert hpsv3_size(1, 1) == (448, 448) and hpsv3_size(448, 448) == (448, 448)
    for h, w in [(120, 300), (250, 90), (1200, 1600), (3, 2)]:
        rh, rw = hpsv3_size(h, w)
        assert rh % 28 == 0 and rw % 28 == 0 and abs(rh * rw - PIXELS) / PIXELS < 0.25
    with Image.open(IMAGES / "wide.png") as im:
        patches = metric.preprocess(im, "wide.png")
    rh, rw = hpsv3_size(120, 300)
    assert patches.shape == (rh // 28, rw // 28, 2, 2, 3 * 2 * 14 * 14)
    # both temporal copies of a patch are the same frame
    p = patches.reshape(-1, 3, 2, 14, 14)
    assert torch.equal(p[:, :, 0], p[:, :, 1])


def test_compare_is_the_uncertainty_loss_pair_probability(metric):
    imgs = [IMAGES / "wide.png", IMAGES / "tall.jpg"]
    prompt = CASES[0]["prompt"]
    (mu_a, s_a), (mu_b, s_b) = metric.score(imgs, prompt)
    p = metric.compare(imgs, prompt)
    # E[sigmoid(z)], z ~ N(mu_a - mu_b, s_a^2 + s_b^2), by quadrature on a fine grid
    m, s = mu_a - mu_b, math.hypot(s_a, s_b)
    z = np.linspace(m - 12 * s, m + 12 * s, 200001)
    density = np.exp(-0.5 * ((z - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    expected = np.sum(density / (1 + np.exp(-z))) * (z[1] - z[0])
    assert p.sum() == pytest.approx(1.0) and p[0] == pytest.approx(expected, abs=1e-4)


def test_preference_probabilities_limits():
    mu = np.array([0.3, -1.0, 2.0])
    # no uncertainty: the Bradley-Terry softmax
    soft = np.exp(mu) / np.exp(mu).sum()
    assert np.allclose(preference_probabilities(mu, np.zeros(3)), soft, atol=1e-9)
    # symmetric candidates share the probability; more uncertainty pulls towards 1/k
    assert np.allclose(preference_probabilities(np.zeros(4), np.ones(4)), 0.25, atol=1e-4)
    wide = preference_probabilities(mu, np.full(3, 5.0))
    assert wide.max() < soft.max() and wide.min() > soft.min() and wide.sum() == pytest.approx(1.0)
    assert np.allclose(preference_probabilities(mu, np.ones(3), temperature=2.0),
                       preference_probabilities(mu / 2, np.ones(3) / 2), atol=1e-9)


def test_score_tensor_matches_score_and_has_gradients(metric):
    for name in ("wide.png", "tall.jpg", "large.jpg"):
        with Image.open(IMAGES / name) as im:
            rgb = np.asarray(im.convert("RGB"))
        pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
        out = metric.score_tensor(pixels, CASES[0]["prompt"])
        ref = metric.score(IMAGES / name, CASES[0]["prompt"])
        assert out.shape == (1, 2)
        assert np.allclose(out.detach().numpy()[0], ref, rtol=0, atol=1e-5), name  # same pixels, same kernels
        out[0, 0].backward()
        assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def _model_copy(tmp_path: Path, edit=None, files=SMALL) -> Path:
    from safetensors.torch import load_file, save_file

    root = tmp_path / "model"
    root.mkdir(parents=True)
    for f in files:
        shutil.copy(MODEL / f, root / f)
    state = load_file(str(MODEL / CHECKPOINT))
    if edit is not None:
        edit(state)
    save_file(state, str(root / CHECKPOINT))
    return root


@pytest.mark.parametrize("key,shape", [
    ("model.layers.1.self_attn.q_proj.weight", (64, 32)),
    ("visual.blocks.0.attn.qkv.weight", (96, 16)),
    ("rm_head.3.weight", (16, 512)),
])
def test_wrong_shape_names_the_tensor(tmp_path, key, shape):
    def edit(state):
        state[key] = torch.zeros(shape)

    with pytest.raises(prefscore.CheckpointError, match=rf"{key.replace('.', '[.]')}: checkpoint \({shape[0]}, {shape[1]}\)"):
        prefscore.load("hpsv3", model=_model_copy(tmp_path, edit))


def test_missing_and_foreign_tensors(tmp_path):
    def drop(state):
        del state["visual.merger.ln_q.bias"]

    with pytest.raises(prefscore.CheckpointError, match="missing visual.merger.ln_q.bias"):
        prefscore.load("hpsv3", model=_model_copy(tmp_path / "a", drop))

    def foreign(state):
        state["text_projection.weight"] = torch.zeros(2, 2)

    with pytest.raises(prefscore.CheckpointError, match="text_projection.weight.*not an HPSv3"):
        prefscore.load("hpsv3", model=_model_copy(tmp_path / "b", foreign))


def test_offline_sources_are_named(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(prefscore.ModelSourceError, match="MizzenAI/HPSv3.*offline"):
        prefscore.load("hpsv3")
    # a directory with only the published weights takes the rest from Qwen/Qwen2-VL-7B-Instruct, as the official code
    root = _model_copy(tmp_path, files=[])
    with pytest.raises(prefscore.ModelSourceError, match="Qwen/Qwen2-VL-7B-Instruct.*offline"):
        prefscore.load("hpsv3", model=root)
    metric = prefscore.load("hpsv3", model=root, base=str(MODEL))
    case = CASES[0]
    assert abs(metric.score(IMAGES / case["image"], case["prompt"])[0] - case["mu"]) <= parity_tol(case["mu"])


def test_evaluate_and_calibrate_accept_it(metric, tmp_path):
    from prefscore.evaluation import EvalConfig, calibrate, evaluate

    names = ["wide.png", "tall.jpg", "square448.png", "one.png"]
    for n in names:
        shutil.copy(IMAGES / n, tmp_path / n)
    prompt = CASES[0]["prompt"]
    rows = [{"prompt": prompt, "image_a": a, "image_b": b, "label": "a"} for a, b in
            [(names[0], names[1]), (names[2], names[3]), (names[1], names[2])]]
    pd.DataFrame(rows).to_csv(tmp_path / "prefs.csv", index=False)
    res = evaluate(tmp_path / "prefs.csv", metrics=["hpsv3"], models={"hpsv3": str(MODEL)}, config=EvalConfig(n_boot=0))
    mu = dict(zip(names, metric.score([tmp_path / n for n in names], prompt)[:, 0]))
    got = dict(zip(res.item_scores.images, res.item_scores.values["hpsv3.mu"]))
    for n in names:
        assert got[str(tmp_path / n)] == pytest.approx(mu[n], rel=1e-6)
    human_ok = np.mean([mu[r["image_a"]] > mu[r["image_b"]] for r in rows])
    assert res.get("hpsv3.mu", "accuracy").estimate == pytest.approx(human_ok)

    frame = pd.DataFrame({"image": [str(tmp_path / n) for n in names], "prompt": prompt,
                          "hpsv3.mu": [mu[n] for n in names]})
    cal = calibrate(frame, columns=["hpsv3.mu"], models={"hpsv3": str(MODEL)})
    composite = prefscore.load("composite", model=cal.save(tmp_path / "cal.json"))
    assert np.allclose(composite.score([tmp_path / n for n in names], prompt), cal.apply(frame), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("template_file", ["chat_template.jinja", "tokenizer_config.json"])
def test_chat_template_from_jinja_or_tokenizer_config(tmp_path, template_file, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    files = ["config.json", "preprocessor_config.json", "tokenizer.json"]
    root = _model_copy(tmp_path, files=files + (["tokenizer_config.json"] if template_file == "tokenizer_config.json" else []))
    if template_file == "chat_template.jinja":
        template = json.loads((MODEL / "chat_template.json").read_text())["chat_template"]
        (root / "chat_template.jinja").write_text(template)
    metric = prefscore.load("hpsv3", model=root)
    case = CASES[0]
    assert abs(metric.score(IMAGES / case["image"], case["prompt"])[0] - case["mu"]) <= parity_tol(case["mu"])
    (root / template_file).unlink()  # no template anywhere (the base is offline): named
    with pytest.raises(prefscore.ModelSourceError, match="no chat template"):
        prefscore.load("hpsv3", model=root)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="no option"):
        prefscore.load("hpsv3", model=str(MODEL), processor="x")


def _cache_repo(cache: Path, repo: str, files: list[str]) -> None:
    """A hub-cache entry (as `hf download` leaves it) holding the fixture's copy of ``files``."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files:
        shutil.copy(MODEL / f, snap / f)


def test_loads_by_hub_id_from_the_hub_cache(monkeypatch, tmp_path):
    """The default sources (weights from MizzenAI/HPSv3, the rest from Qwen/Qwen2-VL-7B-Instruct), offline from the cache."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    _cache_repo(cache, "MizzenAI/HPSv3", [CHECKPOINT])
    _cache_repo(cache, "Qwen/Qwen2-VL-7B-Instruct", SMALL)
    metric = prefscore.load("hpsv3")
    case = CASES[1]
    assert abs(metric.score(IMAGES / case["image"], case["prompt"])[0] - case["mu"]) <= parity_tol(case["mu"])
