"""VQAScore on Qwen2-VL / Qwen2.5-VL against t2v-metrics 3.0's own scoring code (tests/data/vqascore-qwen)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import prefscore
from conftest import parity_tol, read_jsonl
from prefscore.cli import app
from prefscore.errors import CheckpointError, ModelSourceError, PromptError, ScoringError
from prefscore.metrics.vqascore import resolve_model

DATA = Path(__file__).parent / "data" / "vqascore-qwen"
CASES = read_jsonl(DATA / "cases.jsonl")
SET = json.loads((DATA / "set.json").read_text())
FAMILIES = ("qwen2-vl", "qwen2.5-vl")



def cases(family: str) -> list[dict]:
    return [c for c in CASES if c["model"] == family]


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield request.param, prefscore.load("vqascore", model=str(DATA / request.param))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scored(loaded):
    """Every case of the family in one batched call (mixed images, sizes and prompts): ``(scores, errors)``."""
    family, metric = loaded
    rows = cases(family)
    with pytest.raises(ScoringError) as info:
        metric.score([str(DATA / c["image"]) for c in rows], [c["prompt"] for c in rows], batch_size=4)
    return info.value.scores, info.value.errors


def test_every_official_case_batched(loaded, scored):
    family, _ = loaded
    scores, errors = scored
    rows = cases(family)
    checked = 0
    for case, value in zip(rows, scores):
        if case["score"] is None:
            continue
        assert abs(value - case["score"]) <= parity_tol(case["score"]), (family, case["image"], case["prompt_index"], value,
                                                                   case["score"])
        checked += 1
    assert checked == 10 * 5 + 1  # 10 images x 5 prompts, the large JPEG with one
    # the non-image: an error row for each of its prompts (the official code fails too), the others scored
    bad = [i for i, c in enumerate(rows) if c["score"] is None]
    assert sorted(i for i, _, _ in errors) == bad
    assert all(rows[i]["image"].endswith("not_an_image.png") and "official_error" in rows[i] for i in bad)
    assert all(math.isnan(scores[i]) for i in bad)


def test_single_calls_match(loaded):
    family, metric = loaded
    for case in [c for c in cases(family) if c["score"] is not None and c["image"].endswith(("wide.png", "tall.jpg"))]:
        value = metric.score(str(DATA / case["image"]), case["prompt"])
        assert abs(value - case["score"]) <= parity_tol(case["score"]), (family, case["image"], case["prompt_index"])


def test_official_inputs(loaded):
    """Token count and image grid of every scored case as the official processor built them."""
    from PIL import Image

    family, metric = loaded
    for case in [c for c in cases(family) if c["score"] is not None]:
        with Image.open(DATA / case["image"]) as im:
            patches = metric.preprocess(im, case["image"])
        ids, _, answer = metric.model.prompt_ids(case["prompt"])
        assert [1, patches.shape[0] * 2, patches.shape[1] * 2] == case["grid_thw"]
        assert len(ids) - 1 + patches.shape[0] * patches.shape[1] == case["n_tokens"]
        assert answer == SET["models"][family]["yes_id"]


def test_repetition_penalty_is_applied(loaded):
    family, metric = loaded
    ref = SET["models"][family]["without_repetition_penalty"]
    case = next(c for c in cases(family) if c["image"].endswith(ref["image"]) and c["prompt_index"] == ref["prompt_index"])
    assert metric.model.penalty == 1.05
    assert abs(case["score"] - ref["score"]) > 10 * parity_tol(ref["score"])  # the fixture tells the two apart
    metric.model.penalty = 1.0
    try:
        value = metric.score(str(DATA / case["image"]), case["prompt"])
    finally:
        metric.model.penalty = 1.05
    assert abs(value - ref["score"]) <= parity_tol(ref["score"])


def test_prompt_with_image_token_is_refused(loaded):
    _, metric = loaded
    with pytest.raises(PromptError, match="image_pad"):
        metric.score(str(DATA / "../vqascore/images/square.png"), "a cat <|image_pad|> here")


def test_score_tensor_matches_score_and_has_gradients(loaded):
    import numpy as np
    import torch
    from PIL import Image

    family, metric = loaded
    prompts = ["a red fox in the snow", ""]
    for name in ("wide.png", "tall.jpg", "rgba.png"):  # downscaled, mixed, upscaled
        with Image.open(DATA / "../vqascore/images" / name) as im:
            rgb = np.asarray(im.convert("RGB"))  # the official code converts before resizing
        one = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div(255)
        pixels = one.repeat(2, 1, 1, 1).requires_grad_(True)
        out = metric.score_tensor(pixels, prompts)
        ref = metric.score([str(DATA / "../vqascore/images" / name)] * 2, prompts)
        assert out.shape == (2,)
        assert np.allclose(out.detach().numpy(), ref, rtol=0, atol=1e-5), (family, name)  # same pixels, same kernels
        out.sum().backward()
        assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_t2v_metrics_names_resolve():
    assert resolve_model("qwen2.5-vl-7b") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model("Qwen2-VL-2B") == "Qwen/Qwen2-VL-2B-Instruct"
    assert resolve_model("clip-flant5-xl") == "zhiqiulin/clip-flant5-xl"
    assert resolve_model("someone/other") == "someone/other"
    with pytest.raises(ModelSourceError, match="Qwen/Qwen2.5-VL-32B-Instruct"):  # offline: names the repository
        prefscore.load("vqascore", model="qwen2.5-vl-32b")


def test_t2v_metrics_name_loads_from_the_hub_cache(monkeypatch, tmp_path):
    """``model="qwen2.5-vl-7b"`` -> Qwen/Qwen2.5-VL-7B-Instruct, offline from a hub cache holding the tiny model."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    commit = "0" * 40
    root = cache / "models--Qwen--Qwen2.5-VL-7B-Instruct"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(DATA / "qwen2.5-vl", root / "snapshots" / commit)
    metric = prefscore.load("vqascore", model="qwen2.5-vl-7b")
    case = next(c for c in cases("qwen2.5-vl") if c["image"].endswith("square.png") and c["prompt_index"] == 0)
    assert abs(metric.score(str(DATA / case["image"]), case["prompt"]) - case["score"]) <= parity_tol(case["score"])


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama'.*qwen2_vl"):
        prefscore.load("vqascore", model=str(tmp_path))


def test_clip_t5_options_are_refused_for_qwen():
    with pytest.raises(ValueError, match="vision_tower"):
        prefscore.load("vqascore", model=str(DATA / "qwen2-vl"), vision_tower="x")


def test_unsupported_generation_processor_is_refused(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(DATA / "qwen2-vl", model)
    cfg = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(dict(cfg, no_repeat_ngram_size=3)))
    with pytest.raises(CheckpointError, match="no_repeat_ngram_size"):
        prefscore.load("vqascore", model=str(model))


def test_cli_scores_a_qwen_model(tmp_path):
    case = next(c for c in cases("qwen2.5-vl") if c["score"] is not None and c["prompt_index"] == 2)
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["score", str(DATA / case["image"]), "-m", "vqascore", "--model",
                                      str(DATA / "qwen2.5-vl"), "--prompt", case["prompt"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    value = read_jsonl(out)[0]["vqascore"]
    assert abs(value - case["score"]) <= parity_tol(case["score"])
