"""q-align with the official mPLUG-Owl2 checkpoints, run natively, against the official scorer.

Ground truth: ``../shared/fixtures/q-align`` (its README.md is the spec): the official Q-Align code
(Q-Align@14dfdff, transformers 4.36.1, float32 CPU) on a tiny random checkpoint in the published
file layout. Every case is reproduced through ``prefscore.load("q-align", model=DIR, task=...)``.
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
from conftest import read_jsonl, shared_fixture
from prefscore.backbones import mplug_owl2
from prefscore.errors import CheckpointError, ScoringError

W15 = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
TASKS = {"quality": "quality", "aesthetics": "aesthetics", "video": "video-quality"}


def close(ours, ref) -> None:
    """The project's parity tolerance: |ours - ref| <= 1e-4 * max(1, |ref|)."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert np.all(np.abs(ours - ref) <= 1e-4 * np.maximum(1.0, np.abs(ref))), (ours, ref)


@pytest.fixture(scope="module")
def fixture() -> Path:
    return shared_fixture("q-align")


@pytest.fixture(scope="module")
def cases(fixture) -> list[dict]:
    return read_jsonl(fixture / "cases.jsonl")


@pytest.fixture(scope="module")
def metrics(fixture) -> dict:
    """One metric per task (and scale), loaded once: the tiny model loads in well under a second."""
    out = {}
    for task, name in TASKS.items():
        out[task] = prefscore.load("q-align", model=fixture / "model", task=name)
        out[task, "0-1"] = prefscore.load("q-align", model=fixture / "model", task=name, scale="0-1")
    return out


def single_cases(cases, task):
    return [c for c in cases if c["task"] == task and not c["id"].startswith("video-batch/")]


@pytest.mark.parametrize("task", list(TASKS))
def test_official_cases_batched(fixture, cases, metrics, task):
    """Each task's inputs in one call (the images form one batch, as in the reference)."""
    chosen = single_cases(cases, task)
    metric, metric01 = metrics[task], metrics[task, "0-1"]
    assert type(metric.backend).__name__ == "Owl2Backend"
    for case in chosen:  # prompt ids and level ids exactly as the official tokenizer_image_token / [1]
        assert metric.backend.input_ids.tolist() == case["input_ids"]
        assert metric.level_token_ids == case["level_token_ids"]
        assert metric.backend.prompt == case["prompt"]
    files = [fixture / c["files"][0] for c in chosen]
    if task != "video":
        assert chosen[0]["batch"]["files"] == [c["files"][0] for c in chosen]  # the reference's batch, in order
    probs = metric.level_probabilities(files, batch_size=len(files))
    scores = metric.score(files, batch_size=len(files))
    scores01 = metric01.score(files, batch_size=len(files))
    for case, p, s, s01 in zip(chosen, probs, scores, scores01):
        close(p, case["probs"])
        close(s, case["score"])
        close(s01, case["score_0_1"])
    assert np.ptp(scores) > 0.05  # the tiny model tells the inputs apart


@pytest.mark.parametrize("task", list(TASKS))
def test_official_cases_one_by_one(fixture, cases, metrics, task):
    metric = metrics[task]
    for case in single_cases(cases, task):
        close(metric.score(fixture / case["files"][0]), case["score"])


def test_pixels_equal_the_reference_processor(fixture, cases, metrics):
    """expand2square in the image's own mode + CLIPImageProcessor (4.36): the recorded pixel samples."""
    backend = metrics["quality"].backend
    for case in single_cases(cases, "quality"):
        image = Image.open(fixture / case["files"][0])
        pixels = backend.pixels(image).numpy()
        ref = case["pixels"]
        assert list(pixels.shape) == ref["shape"]
        for y, x, rgb in ref["samples_yx_rgb"]:
            np.testing.assert_allclose(pixels[:, y, x], rgb, atol=1e-6)  # float32 normalise of equal uint8
        np.testing.assert_allclose(pixels.mean(), ref["mean"], atol=1e-6)


def test_video_frames_are_the_reference_frames(fixture, cases):
    """PyAV at 1 fps (int(fps * i)) gives exactly the RGB bytes decord gave the reference."""
    import hashlib

    from prefscore.metrics.qalign_video import read_video_frames

    for case in single_cases(cases, "video"):
        frames = read_video_frames(fixture / case["files"][0], case["id"])
        assert len(frames) == len(case["video"]["frame_indices"])
        digests = [hashlib.sha256(np.asarray(f, dtype=np.uint8).tobytes()).hexdigest() for f in frames]
        assert digests == case["video"]["frame_rgb_sha256"]
        assert list(frames[0].size) == case["video"]["frame_size"]


def test_video_batch_scores_each_video_as_alone(fixture, cases, metrics):
    """The official code right-pads videos of different lengths and reads position -1, a padding
    position for the shorter one; prefscore scores each video as it does alone (documented)."""
    by_id = {c["id"]: c for c in cases}
    batch = by_id["video-batch/clip_24fps.mp4"]
    assert batch["right_padded"] and batch["batch"]["files"] == ["videos/clip_10fps.mp4", "videos/clip_24fps.mp4"]
    scores = metrics["video"].score([fixture / f for f in batch["batch"]["files"]], batch_size=2)
    close(scores[0], by_id["video/clip_10fps.mp4"]["score"])
    close(scores[1], by_id["video/clip_24fps.mp4"]["score"])
    close(scores[0], by_id["video-batch/clip_10fps.mp4"]["score"])  # the longer one is unaffected officially too
    assert abs(scores[1] - batch["score"]) > 0.1  # the official batched number is the padded read-out


def test_images_the_official_code_cannot_score(fixture, metrics):
    """errors.json: a 1x1 image (the official processor misreads its channel axis) and a non-square
    L image (the official pad canvas rejects a colour triple). prefscore scores both: the 1x1 image
    is a flat colour after the bicubic upscale; an L image is converted to RGB, then padded."""
    errors = json.loads((fixture / "errors.json").read_text())
    assert {e["file"] for e in errors} == {"images/one.png", "images/gray_wide.png"}
    metric = metrics["quality"]
    one, wide = Image.open(fixture / "images/one.png"), Image.open(fixture / "images/gray_wide.png")
    assert wide.mode == "L" and wide.size == (210, 140)
    scores = metric.score([fixture / "images/one.png", fixture / "images/gray_wide.png"])
    assert np.isfinite(scores).all()
    flat = Image.new("RGB", (448, 448), one.convert("RGB").getpixel((0, 0)))
    expected = metric.score([flat, wide.convert("RGB")])
    np.testing.assert_allclose(scores, expected, atol=1e-6)  # the same pixels through the same model


def test_bad_items_are_error_rows(fixture, cases, metrics, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((fixture / "images/landscape.png").read_bytes()[:500])
    good = single_cases(cases, "quality")[:2]
    items = [fixture / good[0]["files"][0], corrupt, tmp_path / "missing.jpg", fixture / good[1]["files"][0]]
    with pytest.raises(ScoringError) as info:
        metrics["quality"].score(items)
    assert [e[0] for e in info.value.errors] == [1, 2]
    close(info.value.scores[[0, 3]], [good[0]["score"], good[1]["score"]])
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    video_case = next(c for c in cases if c["id"] == "video/clip_24fps.mp4")
    out = metrics["video"].score([broken, fixture / video_case["files"][0]], on_error="nan")
    assert np.isnan(out[0])
    close(out[1], video_case["score"])


def test_weights_load_lazily_and_are_placed_as_asked(fixture, metrics):
    metric = prefscore.load("q-align", model=fixture / "model")
    assert metric.backend._model is None
    model = metric.load_model()
    assert model.dtype == torch.float32 and model.vision_device == torch.device("cpu")
    # the stored bfloat16 sin-cos tables are used as stored; they are the official formula rounded
    cfg = model.config.abstractor
    core = model.model.visual_abstractor.encoder.layers[0].crossattention.attention
    q = torch.from_numpy(mplug_owl2.sincos_1d(cfg.hidden_size, np.arange(cfg.num_learnable_queries, dtype=np.float32)))
    k = torch.from_numpy(mplug_owl2.sincos_2d(cfg.hidden_size, cfg.grid_size))
    torch.testing.assert_close(core.q_pos_embed, q.float().bfloat16().float(), atol=0, rtol=0)
    torch.testing.assert_close(core.k_pos_embed, k.float().bfloat16().float(), atol=0, rtol=0)
    with pytest.raises(ValueError, match="model_kwargs"):
        prefscore.load("q-align", model=fixture / "model", model_kwargs={"attn_implementation": "eager"})
    with pytest.raises(ValueError, match="one image slot"):
        prefscore.load("q-align", model=fixture / "model", question="Compare <|image|> with this one")


def test_device_map_plans():
    with torch.device("meta"):
        model = mplug_owl2.Owl2ForScoring(mplug_owl2.Owl2Config.from_dict({"num_hidden_layers": 4}))
    plan = mplug_owl2.plan_devices(model, torch.device("cpu"), {"": "cpu", "model.layers.2": "meta", "lm_head": "meta"})
    assert plan["model.layers.2.self_attn.k_proj.multiway.1.weight"] == torch.device("meta")
    assert plan["model.layers.1.mlp.up_proj.weight"] == torch.device("cpu")
    assert plan["lm_head.weight"] == torch.device("meta")
    assert plan["model.norm.weight"] == torch.device("cpu")
    with pytest.raises(ValueError, match="places no module"):
        mplug_owl2.plan_devices(model, torch.device("cpu"), {"model": "cpu"})
    with pytest.raises(ValueError, match="disk"):
        mplug_owl2.plan_devices(model, torch.device("cpu"), {"": "disk"})


def test_device_map_dict_scores_the_same(fixture, cases, metrics):
    chosen = single_cases(cases, "quality")[:3]
    metric = prefscore.load("q-align", model=fixture / "model", device_map={"": "cpu", "model.layers.1": "cpu"})
    close(metric.score([fixture / c["files"][0] for c in chosen]), [c["score"] for c in chosen])


def copy_small_files(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("pytorch_model"):
            shutil.copy(f, dst / f.name)


def fixture_state(model_dir: Path) -> dict[str, torch.Tensor]:
    state = {}
    for path in mplug_owl2.weight_files(model_dir):
        state.update(mplug_owl2.read_tensors(path))
    return state


def test_safetensors_shards_and_single_files_load_alike(fixture, cases, metrics, tmp_path):
    from safetensors.torch import save_file

    state = fixture_state(fixture / "model")
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    shards = tmp_path / "safetensors-shards"
    copy_small_files(fixture / "model", shards)
    for name, names in halves.items():
        save_file({k: state[k].contiguous() for k in names}, str(shards / name))
    (shards / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, names in halves.items() for k in names}}))
    single = tmp_path / "single-bin"
    copy_small_files(fixture / "model", single)
    # an extra tensor (rotary inv_freq, as older transformers saved) and unknown config keys are ignored
    torch.save({**state, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}, single / "pytorch_model.bin")
    config = json.loads((single / "config.json").read_text())
    (single / "config.json").write_text(json.dumps({**config, "mm_projector_lr": 2e-5, "tune_visual_abstractor": True}))
    chosen = single_cases(cases, "quality")[:3]
    files = [fixture / c["files"][0] for c in chosen]
    reference = metrics["quality"].score(files)
    for directory in (shards, single):
        ours = prefscore.load("q-align", model=directory).score(files)
        np.testing.assert_array_equal(ours, reference)  # same tensors, same computation


def test_wrong_checkpoints_are_named(fixture, tmp_path):
    state = fixture_state(fixture / "model")
    wrong = tmp_path / "wrong-size"
    copy_small_files(fixture / "model", wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "intermediate_size": 100}))
    torch.save(state, wrong / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight has shape \((176, 64|64, 176)\), but config\.json implies"):
        prefscore.load("q-align", model=wrong).load_model()
    lacking = tmp_path / "lacking"
    copy_small_files(fixture / "model", lacking)
    torch.save({k: v for k, v in state.items() if "k_proj.multiway.1" not in k}, lacking / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"lacks 2 tensor\(s\).*k_proj\.multiway\.1\.weight"):
        prefscore.load("q-align", model=lacking).score(fixture / "images/landscape.png")
    nothing = tmp_path / "no-weights"
    copy_small_files(fixture / "model", nothing)
    metric = prefscore.load("q-align", model=nothing)  # small files only: the tokenizer and the prompt ids
    with pytest.raises(prefscore.ModelSourceError, match="no weights"):
        metric.load_model()


def test_half_precision_runs_close_to_float32(fixture, cases, metrics):
    """float16 (the official GPU dtype) and bfloat16 on the CPU: the tolerance is the measured
    rounding effect on this tiny random model (docs/q-align.md quotes the numbers)."""
    chosen = single_cases(cases, "quality")
    files = [fixture / c["files"][0] for c in chosen]
    full = np.array([c["score"] for c in chosen])
    for dtype, tol in (("float16", 0.02), ("bfloat16", 0.1)):
        metric = prefscore.load("q-align", model=fixture / "model", dtype=dtype)
        assert metric.load_model().dtype == getattr(torch, dtype)
        np.testing.assert_allclose(metric.score(files), full, atol=tol)


def test_seven_b_sizes_from_the_default_config():
    """one-align's visual parts use the config defaults: ViT-L/14 at 448 px (24 x 1024) and the
    6-layer abstractor; with LLaMA-2-7B and its text/image copies of k, v and the norms."""
    counts = mplug_owl2.Owl2Config.from_dict({"max_position_embeddings": 4096}).parameter_count()
    assert counts == {"language_model": 7_812_419_584, "vision_encoder": 303_966_208,
                      "visual_abstractor": 81_473_536, "total": 8_197_859_328}


def test_cli_scores_the_fixture_folder(fixture, cases, tmp_path):
    from typer.testing import CliRunner

    from prefscore.cli import app

    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["score", str(fixture / "images"), "-m", "q-align", "--model",
                                      str(fixture / "model"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    for case in single_cases(cases, "quality"):
        close(rows[Path(case["files"][0]).name]["q-align"], case["score"])
    assert set(rows) == {p.name for p in (fixture / "images").iterdir()}
    assert all(r["error"] in (None, "") for r in rows.values())
