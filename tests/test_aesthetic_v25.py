"""Aesthetic Predictor V2.5 (laion-aesthetic-v2.5) against the official package's recorded outputs.

The ground truth is tests/data/laion-aesthetic-v2.5 (generator, venv script and README there): a tiny
seeded SigLIP in the published layout of google/siglip-so400m-patch14-384 plus a head in the layout of
aesthetic_predictor_v2_5.pth, scored by aesthetic-predictor-v2-5 2024.12.18.1 on transformers 4.47.1.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import prefscore
from conftest import read_jsonl
from prefscore.cli import app
from prefscore.differentiable import measure_gap
from prefscore.engine import Engine, EngineOptions
from prefscore.engine.shared import same_tower
from prefscore.errors import CheckpointError, ModelSourceError

DATA = Path(__file__).resolve().parent / "data" / "laion-aesthetic-v2.5"
MODEL = DATA / "model"
CASES = read_jsonl(DATA / "cases.jsonl")
TOL = 1e-4  # the project's parity tolerance, relative to max(1, |ref|)


def expected(case: dict) -> float:
    """What the image means to the official model: its README call, or, where transformers misreads an
    (H, W, 3) array with H in (1, 3) as channels-first (crash at H = 1, scrambled pixels at H = 3), the
    same official call with ``input_data_format="channels_last"``."""
    return case["score_channels_last"] if "score_channels_last" in case else case["score"]


@pytest.fixture(scope="module")
def metric():
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    return prefscore.load("laion-aesthetic-v2.5", model=MODEL)


def test_every_case_matches_the_official_package(metric):
    paths = [str(DATA / c["image"]) for c in CASES]
    scores = metric.score(paths)
    for case, score in zip(CASES, scores):
        ref = expected(case)
        err = abs(score - ref) / max(1.0, abs(ref))
        assert err <= TOL, (case["image"], score, ref)
    assert len(CASES) == 18


def test_siglip_features_match_the_official_pooler_output(metric):
    """The tower alone: pooler_output (attention-pool head) before the L2 normalisation."""
    for case in CASES:
        feats = case.get("features_channels_last", case.get("features"))
        with Image.open(DATA / case["image"]) as image:
            pixels = metric.preprocess(image, case["image"])[None]
        with torch.no_grad():
            ours = metric.siglip.image_features(pixels)[0].numpy()
        np.testing.assert_allclose(ours, feats, rtol=0, atol=2e-5, err_msg=case["image"])  # float32 sums, sdpa vs sdpa


def test_the_reference_failures_are_the_channel_guess_of_transformers():
    """Recorded as the official code behaves: height 1 crashes, height 3 is scored on scrambled pixels;
    prefscore scores what the image is (see README)."""
    failed = {c["image"] for c in CASES if c["score"] is None}
    assert failed == {"images/one_pixel.png", "images/one_row.png"}
    assert all("mean must have 1 elements" in c["reference_error"] for c in CASES if c["score"] is None)
    three = next(c for c in CASES if c["image"] == "images/three_rows.png")
    assert abs(three["score"] - three["score_channels_last"]) > 1e-2


def test_batched_and_single_scores_agree_and_the_score_is_affine_in_the_normalised_features(metric):
    paths = [str(DATA / c["image"]) for c in CASES[:5]]
    batched = metric.score(paths, batch_size=5)
    single = np.array([metric.score(p) for p in paths])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)  # batch size changes float32 sums only
    with Image.open(paths[0]) as image:
        pixels = metric.preprocess(image, "x")[None]
    with torch.no_grad():
        f = metric.siglip.image_features(pixels).float()
        f = f / f.norm(dim=-1, keepdim=True)
        layers = [m for m in metric.head.scoring_head if isinstance(m, torch.nn.Linear)]
        w, b = torch.eye(f.shape[1]), torch.zeros(f.shape[1])
        for lin in layers:  # no activations: the head collapses to one affine map
            w, b = lin.weight @ w, lin.weight @ b + lin.bias
        assert abs(float(f @ w.T + b) - batched[0]) < 1e-4


def test_cpu_tower_calls_are_capped_by_activation_size(metric):
    """On the CPU the tower takes as many images per call as keep its MLP activations under
    ``cpu_chunk_bytes`` (so400m: one); the features are those of the whole batch at once."""
    paths = [str(DATA / c["image"]) for c in CASES[:3]]
    pixels = torch.stack([metric.preprocess(Image.open(p), p) for p in paths])
    tower = metric.siglip
    calls = []
    hook = tower.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        with torch.no_grad():
            whole = tower.image_features(pixels)
            assert len(calls) == 1  # the tiny fixture tower: far under the cap
            tower.cpu_chunk_bytes = 1  # one image per call, as for so400m at 384 px
            chunked = tower.image_features(pixels)
    finally:
        hook.remove()
        del tower.cpu_chunk_bytes
    assert len(calls) == 1 + 3
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)  # batch layout changes float32 sums only


def test_local_directory_with_a_vision_only_checkpoint_and_options(metric, tmp_path):
    """A SiglipVisionModel save (model_type siglip_vision_model) and a renamed head load the same."""
    d = tmp_path / "vision-only"
    fresh = prefscore.load("laion-aesthetic-v2.5", model=MODEL)  # save_pretrained edits the config it saves
    fresh.siglip.model.save_pretrained(d)
    shutil.copy(MODEL / "preprocessor_config.json", d)
    shutil.copy(MODEL / "aesthetic_predictor_v2_5.pth", d / "head.pth")
    assert json.loads((d / "config.json").read_text())["model_type"] == "siglip_vision_model"
    other = prefscore.load("aesthetic-v2.5", model=d, head="head.pth")
    mine, theirs = metric.siglip.state_dict(), other.siglip.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    path = str(DATA / CASES[0]["image"])
    # equal weights, but tensors loaded from another file may take other kernels: float32 noise only
    assert abs(other.score(path) - metric.score(path)) < 1e-5
    # backbone given separately: a folder holding only the head
    h = tmp_path / "head-only"
    h.mkdir()
    shutil.copy(MODEL / "aesthetic_predictor_v2_5.pth", h)
    assert prefscore.load("laion-aesthetic-v2.5", model=h, backbone=str(MODEL)).score(path) == metric.score(path)


def _copy_model(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(MODEL, d)
    return d


def test_wrong_checkpoints_fail_clearly(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy_model(tmp_path)
    original = load_file(d / "model.safetensors")
    save_file({**original, "vision_model.post_layernorm.weight": torch.ones(40)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"post_layernorm.weight' has shape \(40,\).*\(48,\)"):
        prefscore.load("laion-aesthetic-v2.5", model=d)
    save_file({k: v for k, v in original.items() if ".head." not in k}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="lacks 11 tensor"):
        prefscore.load("laion-aesthetic-v2.5", model=d)
    save_file(original, d / "model.safetensors")
    head = torch.load(d / "aesthetic_predictor_v2_5.pth")
    torch.save({**head, "scoring_head.0.weight": torch.zeros(1024, 1152)}, d / "aesthetic_predictor_v2_5.pth")
    with pytest.raises(CheckpointError, match="1152-d features but the SigLIP backbone gives 48-d"):
        prefscore.load("laion-aesthetic-v2.5", model=d)
    torch.save({f"layers.{k}": v for k, v in head.items()}, d / "aesthetic_predictor_v2_5.pth")
    with pytest.raises(CheckpointError, match="scoring_head.0.weight' is missing"):
        prefscore.load("laion-aesthetic-v2.5", model=d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "clip"}))
    with pytest.raises(CheckpointError, match="not a SigLIP model"):
        prefscore.load("laion-aesthetic-v2.5", model=d)


def test_offline_default_names_the_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFSCORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelSourceError, match="aesthetic_predictor_v2_5.pth"):
        prefscore.load("laion-aesthetic-v2.5")
    (tmp_path / "cache").mkdir(exist_ok=True)
    shutil.copy(MODEL / "aesthetic_predictor_v2_5.pth", tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="google/siglip-so400m-patch14-384"):
        prefscore.load("laion-aesthetic-v2.5")


def test_score_tensor_equals_score_on_rgb_images(metric):
    rgb = [DATA / c["image"] for c in CASES if c["mode"] == "RGB" and c["size"][1] > 3][:4]
    rows = measure_gap(metric, rgb)
    assert max(r["abs"] for r in rows) <= 1e-5  # the same pixels: only float32 batch-layout noise
    pixels = torch.rand(2, 3, 50, 70, requires_grad=True)
    metric.score_tensor(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_engine_shares_one_siglip_encode_between_two_loads(metric):
    other = prefscore.load("laion-aesthetic-v2.5", model=MODEL)
    assert other.siglip is not metric.siglip and same_tower(other.siglip, metric.siglip)
    items = [str(DATA / c["image"]) for c in CASES[:4]]
    calls = []
    original = type(metric.siglip).image_features

    def counting(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    type(metric.siglip).image_features = counting
    try:
        out, errors = Engine({"a": metric, "b": other}, EngineOptions(batch_size=2)).score(items + ["missing.png"])
    finally:
        type(metric.siglip).image_features = original
    assert calls == [2, 2]  # the missing file never reaches the tower; one encode per batch for both
    assert {e[0] for e in errors} == {4} and "not found" in errors[0][2]  # an error row, the others scored
    assert np.isnan(out["a"][4]).all() and np.isfinite(out["a"][:4]).all()
    np.testing.assert_array_equal(out["a"][:4], out["b"][:4])


def test_cli_scores_a_folder_with_a_bad_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    chosen = [c for c in CASES if c["image"] in ("images/rgba.png", "images/cmyk.jpg", "images/gray16.png")]
    for c in chosen:
        shutil.copy(DATA / c["image"], folder)
    (folder / "broken.png").write_bytes((DATA / "images" / "landscape.png").read_bytes()[:500])
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["score", str(folder), "-m", "laion-aesthetic-v2.5", "--model", str(MODEL), "-o", str(out)])
    assert result.exit_code == 3, result.output  # finished, with an error row (broken.png)
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    for c in chosen:
        row = rows[Path(c["image"]).name]
        assert row["error"] == ""
        assert abs(float(row["laion-aesthetic-v2.5"]) - expected(c)) <= TOL * max(1.0, abs(expected(c)))
    assert rows["broken.png"]["error"] and rows["broken.png"]["laion-aesthetic-v2.5"] in ("", "nan", "NaN")


def test_evaluate_and_calibrate_take_it_like_any_metric(tmp_path):
    from prefscore.evaluation import calibrate, evaluate

    ratings = tmp_path / "ratings.csv"
    chosen = CASES[:6]
    with ratings.open("w") as fh:
        fh.write("image,score\n")
        for i, c in enumerate(chosen):
            fh.write(f"{DATA / c['image']},{expected(c) + (0.5 if i % 2 else -0.5)}\n")
    result = evaluate(ratings, metrics=["laion-aesthetic-v2.5"], models={"laion-aesthetic-v2.5": str(MODEL)})
    assert result.metrics == ["laion-aesthetic-v2.5"]
    srcc = result.get("laion-aesthetic-v2.5", "srcc").estimate
    assert 0.5 < srcc <= 1.0
    table = tmp_path / "ref.csv"
    with table.open("w") as fh:
        fh.write("image,prompt,laion-aesthetic-v2.5,error\n")
        for c in CASES[:8]:
            fh.write(f"{DATA / c['image']},,{expected(c)},\n")
    cal = calibrate(table, models={"laion-aesthetic-v2.5": str(MODEL)})
    cal_path = cal.save(tmp_path / "cal.json")
    composite = prefscore.load("composite", model=cal_path)
    z = composite.score([str(DATA / c["image"]) for c in CASES[:2]])
    ref = np.array([expected(c) for c in CASES[:8]])
    np.testing.assert_allclose(z, (ref[:2] - ref.mean()) / ref.std(), rtol=1e-4, atol=1e-4)  # z-score, population std
