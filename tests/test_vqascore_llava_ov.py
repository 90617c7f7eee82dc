"""VQAScore with LLaVA-OneVision against t2v-metrics 3.0's own scorer (tests/data/vqascore-llava-ov, generator included)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import prefscore
from conftest import parity_tol, read_jsonl
from prefscore import hub
from prefscore.cli import app
from prefscore.errors import CheckpointError, ModelSourceError, ScoringError

DATA = Path(__file__).parent / "data" / "vqascore-llava-ov"
MODEL = DATA / "llava-onevision-qwen2-7b-ov"
TOWER = DATA / "siglip-so400m-patch14-384"
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
    with pytest.raises(ScoringError) as info:
        metric.score([str(DATA / c["image"]) for c in CASES], [c["prompt"] for c in CASES], batch_size=8)
    return info.value.scores, info.value.errors


def test_every_official_case(scored):
    scores, _ = scored
    checked = 0
    for case, value in zip(CASES, scores):
        if case["score"] is None:
            continue
        assert abs(value - case["score"]) <= parity_tol(case["score"]), (case["image"], case["prompt_index"], value, case["score"])
        checked += 1
    # 11 images x 4 prompts + the cut long prompt and the "<image>" prompt on two of them
    assert checked == 48
    assert sum(c["prompt_index"] >= 4 and c["score"] is not None for c in CASES) == 4


def test_not_an_image_is_an_error_row(scored):
    scores, errors = scored
    bad = [i for i, c in enumerate(CASES) if c["image"].endswith("not_an_image.png")]
    assert bad and all("UnidentifiedImageError" in CASES[i]["official_error"] for i in bad)
    assert sorted(i for i, _, _ in errors) == bad
    assert all(math.isnan(scores[i]) for i in bad)


def test_tokens_as_the_official_code_builds_them(metric):
    prompts = sorted({c["prompt_index"]: c["prompt"] for c in CASES}.items())
    for (_, prompt), ref in zip(prompts, SET["prompt_token_ids"]):
        chunks = metric.model.prompt_ids(prompt)
        ids = [t for k, chunk in enumerate(chunks) for t in ([-200] if k else []) + chunk]
        assert ids == ref
    assert metric.model.n_tokens == SET["tokenizer_ids"] < SET["vocab_size"]  # embeddings cut to the tokenizer
    assert metric.model.answer_id("x") == SET["answer_id"]
    assert len(SET["prompt_token_ids"][4]) + 393 > SET["tokenizer_model_max_length"]  # cut, as the official code does


def test_tiles_follow_the_grid(metric):
    from PIL import Image

    assert metric.model.preprocess(Image.new("RGB", (64, 64)), "square").shape == (2, 3, 384, 384)
    assert metric.model.preprocess(Image.new("RGB", (150, 60)), "small").shape == (2, 3, 384, 384)  # 384² wastes least
    assert metric.model.preprocess(Image.new("RGB", (1500, 500)), "wide").shape == (4, 3, 384, 384)  # 1152x384
    assert metric.model.preprocess(Image.new("RGB", (2400, 1800)), "large").shape == (5, 3, 384, 384)  # 768x768


def test_single_call_matches_batched(metric):
    case = CASES[2]
    value = metric.score(str(DATA / case["image"]), case["prompt"])
    assert abs(value - case["score"]) <= parity_tol(case["score"])


def test_cli_once(tmp_path):
    case = next(c for c in CASES if c["image"].endswith("wide.png") and c["prompt_index"] == 0)
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(app, ["score", str(DATA / case["image"]), "-m", "vqascore", "--model", str(MODEL),
                                      "--option", f"vision_tower={TOWER}", "--prompt", case["prompt"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert abs(read_jsonl(out)[0]["vqascore"] - case["score"]) <= parity_tol(case["score"])


def test_t2v_metrics_names_map_to_lmms_lab(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        for name in ("llava-onevision-qwen2-7b-ov", "llava-onevision-qwen2-7b-si"):
            with pytest.raises(ModelSourceError, match=f"lmms-lab/{name}"):
                prefscore.load("vqascore", model=name)
    finally:
        hub.hub_reachable.cache_clear()


def copy_model(tmp_path: Path, **changes) -> Path:
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_wrong_layout_is_refused(tmp_path):
    # a LLaVA-NeXT llama checkpoint is neither CLIP-FlanT5 nor LLaVA-OneVision
    model = copy_model(tmp_path, architectures=["LlavaLlamaForCausalLM"])
    with pytest.raises(CheckpointError, match="LLaVA-OneVision"):
        prefscore.load("vqascore", model=str(model), vision_tower=str(TOWER))


def test_unsupported_aspect_ratio_is_refused(tmp_path):
    model = copy_model(tmp_path, image_aspect_ratio="pad")
    with pytest.raises(CheckpointError, match="image_aspect_ratio 'pad'"):
        prefscore.load("vqascore", model=str(model), vision_tower=str(TOWER))


def test_missing_weights_name_the_tensor(tmp_path):
    model = copy_model(tmp_path)
    from safetensors.torch import load_file, save_file

    index = json.loads((model / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.mm_projector.0.weight"]
    state = load_file(str(model / shard))
    del state["model.mm_projector.0.weight"]
    save_file(state, str(model / shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="projector weights lack 0.weight"):
        prefscore.load("vqascore", model=str(model), vision_tower=str(TOWER))


def llava_hf_copy(tmp_path: Path, new_names: bool) -> Path:
    """The tiny lmms-lab checkpoint as transformers' convert_llava_onevision_weights_to_hf.py writes it: keys renamed,
    "<image>"/"<video>" added to the tokenizer, embeddings padded with random rows, a llava_onevision config
    (``new_names``: the key names transformers >= 4.52 saves)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AddedToken, AutoTokenizer

    out = tmp_path / ("hf-new" if new_names else "hf-old")
    out.mkdir()
    config = json.loads((MODEL / "config.json").read_text())
    state = {}
    for shard in sorted(MODEL.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    gen = torch.Generator().manual_seed(0)
    pad = 64 * math.ceil((config["vocab_size"] + 2) / 64)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn(pad - config["vocab_size"], state[key].shape[1], generator=gen)
        state[key] = torch.cat([state[key], extra])
    lm = "model.language_model." if new_names else "language_model.model."
    renamed = {}
    for key, value in state.items():
        if key.startswith("model.vision_tower.vision_tower."):
            key = ("model." if new_names else "") + key[len("model.vision_tower."):]
        elif key.startswith("model.mm_projector."):
            key = ("model." if new_names else "") + "multi_modal_projector." + {"0": "linear_1", "2": "linear_2"}[
                key.split(".")[2]] + "." + key.split(".")[3]
        elif key == "model.image_newline":
            key = "model.image_newline" if new_names else "image_newline"
        elif key == "lm_head.weight":
            key = "lm_head.weight" if new_names else "language_model.lm_head.weight"
        else:
            key = lm + key[len("model."):]
        renamed[key] = value
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<image>", "<video>")], special_tokens=True)
    tok.save_pretrained(str(out))
    tower = json.loads((TOWER / "config.json").read_text())
    text_keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "rms_norm_eps", "rope_theta", "max_position_embeddings", "hidden_act", "tie_word_embeddings")
    hf_config = {
        "model_type": "llava_onevision", "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "image_token_index": len(tok) - 2, "video_token_index": len(tok) - 1,
        "image_grid_pinpoints": config["image_grid_pinpoints"], "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full", "projector_hidden_act": "gelu",
        "use_image_newline_parameter": True,
        "text_config": {"model_type": "qwen2", "vocab_size": pad, **{k: config[k] for k in text_keys}},
        "vision_config": {"model_type": "siglip_vision_model", "vision_use_head": False,
                          **{k: tower[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "image_size",
                                                   "patch_size", "hidden_act", "layer_norm_eps")},
                          "num_hidden_layers": tower["num_hidden_layers"] - 1},
    }
    (out / "config.json").write_text(json.dumps(hf_config))
    return out


@pytest.mark.filterwarnings("ignore:.*rope_scaling:FutureWarning")  # AutoTokenizer reading the lmms-lab config
@pytest.mark.parametrize("new_names", [False, True])
def test_llava_hf_layout_gives_the_same_scores(tmp_path, new_names):
    import torch

    torch.set_num_threads(1)
    hf = prefscore.load("vqascore", model=str(llava_hf_copy(tmp_path, new_names)))
    assert hf.model.n_tokens == SET["tokenizer_ids"]  # "<image>" / "<video>" left out of the softmax, as lmms-lab
    cases = [c for c in CASES if c["score"] is not None and c["prompt_index"] in (0, 3)][:6]
    values = hf.score([str(DATA / c["image"]) for c in cases], [c["prompt"] for c in cases])
    for case, value in zip(cases, values):
        assert abs(value - case["score"]) <= parity_tol(case["score"]), (case["image"], value, case["score"])
