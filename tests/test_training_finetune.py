"""CLIP paths on a tiny random CLIP (HF format, tokenizer from the PickScore fixture): a prompt-aware
head on frozen CLIP features, and fine-tuning with checkpoints and an exact resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import prefscore
from prefscore.errors import PromptError
from prefscore.training import FinetuneConfig, HeadConfig, TrainConfig, train
from prefscore.training.features import ClipExtractor
from prefscore.training.finetune import set_trainable
from prefscore.training.synthetic import make_pairs

from conftest import shared_fixture

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def _tiny_clip(root, seed: int):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(root))
    src = shared_fixture("pickscore") / "model"
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, root / name)
    proc = json.loads((src / "preprocessor_config.json").read_text())
    proc.update(size=32, crop_size=32)
    (root / "preprocessor_config.json").write_text(json.dumps(proc))
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return _tiny_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("ftpairs"), n_scenes=6, pairs_per_scene=3, tie_fraction=0.2, seed=3)


def test_prompt_aware_head_on_clip_features(tiny_clip, pairs, tmp_path):
    config = TrainConfig(backbone=str(tiny_clip), head=HeadConfig("linear"), val_fraction=0.34, max_epochs=20,
                         cache_dir=str(tmp_path / "cache"), bootstrap=100)
    result = train(pairs.path, tmp_path / "model", config)
    assert result.meta["prompt_aware"] and result.meta["features"] == "image+text"
    model = prefscore.load(tmp_path / "model")
    assert model.needs_prompt
    paths, prompts = [x for x, _, _ in result.val_scores], [p for _, p, _ in result.val_scores]
    np.testing.assert_allclose(model.score(paths, prompts), [s for *_, s in result.val_scores], atol=1e-5)
    with pytest.raises(PromptError):
        model.score(paths[:1])
    # features = [image, text, image * text]; each part 16-d
    assert json.loads((tmp_path / "model" / "prefscore.json").read_text())["backbone"]["dim"] == 16
    assert load_file(str(tmp_path / "model" / "head.safetensors"))["net.weight"].shape == (1, 48)
    # the cache is keyed by the model: other weights, other key
    other = _tiny_clip(tmp_path / "other", seed=1)
    assert ClipExtractor(str(other)).key != ClipExtractor(str(tiny_clip)).key
    assert ClipExtractor(str(tiny_clip)).key == model.extractor.key


def test_trainable_layers(tiny_clip):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(tiny_clip))
    names = set_trainable(model, FinetuneConfig(vision_layers=1, text_layers=0, logit_scale="fixed"))
    assert names and all(n.startswith(("vision_model.encoder.layers.1.", "vision_model.post_layernorm", "visual_projection"))
                         for n in names)
    assert any(n.startswith("visual_projection") for n in names)
    names = set_trainable(model, FinetuneConfig())
    assert "logit_scale" in names and len(names) == len(list(model.parameters()))


def _config(tiny_clip, **kw):
    return TrainConfig(backbone=str(tiny_clip), val_fraction=0.34, seed=0, bootstrap=100, patience=100,
                       finetune=FinetuneConfig(lr=1e-3, warmup_steps=2, max_steps=4, batch_size=4, grad_accum=2,
                                               checkpoint_every=2, eval_every=2, **kw))


def test_finetune_checkpoints_and_resumes_exactly(tiny_clip, pairs, tmp_path):
    full = train(pairs.path, tmp_path / "full", _config(tiny_clip))
    assert [h["step"] for h in full.history] == [1, 2, 3, 4]
    assert full.history[0]["lr"] == pytest.approx(1e-3)  # warm-up: step 1 of 2 ran at lr/2, the log shows the next lr
    assert "val_accuracy" in full.history[1] and "val_accuracy" in full.history[3]
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000004.pt"]

    assert train(pairs.path, tmp_path / "split", _config(tiny_clip, stop_after=2)) is None  # "interrupted"
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step-0000002.pt"]
    resumed = train(pairs.path, tmp_path / "split", _config(tiny_clip))
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]

    a = load_file(str(tmp_path / "full" / "backbone" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "backbone" / "model.safetensors"))
    init = load_file(str(tiny_clip / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-4  # it did train

    model = prefscore.load(tmp_path / "full")
    assert model.meta["kind"] == "finetune" and model.needs_prompt
    paths, prompts = [x for x, _, _ in full.val_scores], [p for _, p, _ in full.val_scores]
    np.testing.assert_allclose(model.score(paths, prompts), [s for *_, s in full.val_scores], rtol=1e-5, atol=1e-4)
    probs = model.compare(paths[:3], prompts[0])
    assert probs.shape == (3,) and np.isclose(probs.sum(), 1.0)
    assert (tmp_path / "full" / "training_curve.png").is_file() and (tmp_path / "full" / "README.md").is_file()


def test_finetune_rejects_what_it_cannot_do(tiny_clip, pairs, tmp_path):
    with pytest.raises(ValueError, match="no weights to fine-tune"):
        train(pairs.path, tmp_path / "x", TrainConfig(finetune=FinetuneConfig()))
    with pytest.raises(ValueError, match="fp16"):
        train(pairs.path, tmp_path / "x", TrainConfig(backbone=str(tiny_clip), finetune=FinetuneConfig(precision="fp16")))
