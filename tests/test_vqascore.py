"""VQAScore (CLIP-FlanT5) against t2v-metrics 3.0's own scoring code (tests/data/vqascore, generator included)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import prefscore
from conftest import parity_tol, read_jsonl
from prefscore.cli import app
from prefscore.errors import ModelSourceError, PromptError, ScoringError

DATA = Path(__file__).parent / "data" / "vqascore"
MODEL = DATA / "clip-flant5"
TOWER = DATA / "clip-vit-large-patch14-336"
CASES = read_jsonl(DATA / "cases.jsonl")
SET = json.loads((DATA / "set.json").read_text())



@pytest.fixture(scope="module")
def metric():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield prefscore.load("vqascore", model=str(MODEL), vision_tower=str(TOWER))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scored(metric):
    """Every case in one batched call (mixed prompts and images): ``(scores, errors)``."""
    images = [str(DATA / c["image"]) for c in CASES]
    with pytest.raises(ScoringError) as info:
        metric.score(images, [c["prompt"] for c in CASES], batch_size=8)
    return info.value.scores, info.value.errors


def test_every_official_case(scored):
    scores, _ = scored
    checked = 0
    for case, value in zip(CASES, scores):
        if case["score"] is None:
            continue
        assert abs(value - case["score"]) <= parity_tol(case["score"]), (case["image"], case["prompt_index"], value, case["score"])
        checked += 1
    assert checked == 42  # 10 images x 4 prompts + the 2048-id prompt on two of them
    assert sum(c["prompt_index"] == 4 and c["score"] is not None for c in CASES) == 2


def test_images_the_official_code_cannot_score(scored):
    scores, errors = scored
    by_image = {}
    for case, value in zip(CASES, scores):
        by_image.setdefault(case["image"], []).append(value)
    # 1x1: transformers 4.49's processor takes the 1x1x3 array for channels-first and fails; prefscore scores it
    assert all(0.0 < v < 1.0 for v in by_image["images/one_pixel.png"])
    assert "ValueError" in next(c["official_error"] for c in CASES if c["image"] == "images/one_pixel.png")
    # not an image: an error row for each of its prompts, the others scored
    bad = [i for i, c in enumerate(CASES) if c["image"] == "images/not_an_image.png"]
    assert sorted(i for i, _, _ in errors) == bad
    assert all(math.isnan(scores[i]) for i in bad)


def test_tokens_as_the_official_code_builds_them(metric):
    for prompt, ref in zip([c["prompt"] for c in CASES[:5]], SET["prompt_token_ids"]):
        before, after = metric.model.prompt_ids(prompt)
        ids = (before + [-200] + after)[:2048]
        assert ids == ref[:2048]
    assert len(SET["prompt_token_ids"][4]) > 2048  # the long prompt is cut, as the official code does
    assert metric.model.answer_ids("x") == SET["answer_token_ids"]


def test_single_call_matches_batched(metric):
    case = CASES[2]
    value = metric.score(str(DATA / case["image"]), case["prompt"])
    assert abs(value - case["score"]) <= parity_tol(case["score"])


def test_compare_is_softmax_of_log_odds(metric):
    images = [str(DATA / "images" / n) for n in ("square.png", "wide.png", "tall.jpg")]
    p = metric.compare(images, "a red fox in the snow")
    s = metric.score(images, "a red fox in the snow")
    logit = np.log(s) - np.log1p(-s)
    expected = np.exp(logit - logit.max()) / np.exp(logit - logit.max()).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12)  # same arithmetic on the same scores
    assert abs(p.sum() - 1) < 1e-12
    with pytest.raises(PromptError):
        metric.compare(images, ["a", "b", "c"])


def test_prompt_with_image_token_is_refused(metric):
    with pytest.raises(PromptError, match="<image>"):
        metric.score(str(DATA / "images" / "square.png"), "a cat <image> here")


def test_needs_a_prompt(metric):
    with pytest.raises(PromptError):
        metric.score(str(DATA / "images" / "square.png"))


def test_offline_default_names_the_source():
    with pytest.raises(ModelSourceError, match="zhiqiulin/clip-flant5-xxl"):
        prefscore.load("vqascore")


def test_offline_vision_tower_names_the_source():
    with pytest.raises(ModelSourceError, match="openai/clip-vit-large-patch14-336"):
        prefscore.load("vqascore", model=str(MODEL))


def test_wrong_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(prefscore.errors.CheckpointError, match="clip_t5"):
        prefscore.load("vqascore", model=str(tmp_path))


def test_cli_once(tmp_path):
    case = CASES[0]
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["score", str(DATA / case["image"]), "-m", "vqascore", "--model", str(MODEL),
                                      "--option", f"vision_tower={TOWER}", "--prompt", case["prompt"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    row = read_jsonl(out)[0]
    value = row["vqascore"]
    assert abs(value - case["score"]) <= parity_tol(case["score"])


def test_evaluation_scores_it(metric):
    from prefscore.evaluation.scores import compute_scores

    cases = [c for c in CASES if c["image"] in ("images/square.png", "images/wide.png") and c["prompt_index"] < 2]
    table, failures = compute_scores([str(DATA / c["image"]) for c in cases], [c["prompt"] for c in cases],
                                     ["vqascore"], loaded={"vqascore": metric})
    assert not failures
    for c, v in zip(cases, table.values["vqascore"]):
        assert abs(v - c["score"]) <= parity_tol(c["score"])


def test_evaluate_calibrate_and_composite_accept_it(metric, tmp_path):
    """Human pairs -> agreement, and a calibrated composite that reloads vqascore with its options."""
    import pandas as pd

    from prefscore.evaluation import EvalConfig, calibrate, evaluate

    prompt = CASES[0]["prompt"]
    names = ["square.png", "wide.png", "tall.jpg", "rgba.png"]
    paths = [str(DATA / "images" / n) for n in names]
    ref = {c["image"].split("/")[-1]: c["score"] for c in CASES if c["prompt"] == prompt}
    rows = [{"prompt": prompt, "image_a": paths[a], "image_b": paths[b], "label": "a"} for a, b in [(0, 1), (2, 3), (1, 2)]]
    pd.DataFrame(rows).to_csv(tmp_path / "prefs.csv", index=False)
    options = {"vqascore": {"vision_tower": str(TOWER)}}
    res = evaluate(tmp_path / "prefs.csv", metrics=["vqascore"], models={"vqascore": str(MODEL)}, options=options,
                   config=EvalConfig(n_boot=0))
    got = dict(zip(res.item_scores.images, res.item_scores.values["vqascore"]))
    for n, p in zip(names, paths):
        assert abs(got[p] - ref[n]) <= parity_tol(ref[n])
    human_ok = np.mean([ref[names[a]] > ref[names[b]] for a, b in [(0, 1), (2, 3), (1, 2)]])
    assert res.get("vqascore", "accuracy").estimate == pytest.approx(human_ok)

    frame = pd.DataFrame({"image": paths, "prompt": prompt, "vqascore": [got[p] for p in paths]})
    cal = calibrate(frame, columns=["vqascore"], models={"vqascore": str(MODEL)}, options=options)
    composite = prefscore.load("composite", model=cal.save(tmp_path / "cal.json"))
    assert np.allclose(composite.score(paths, prompt), cal.apply(frame), rtol=1e-5, atol=1e-6)
