"""q-align with the transformers-native backends, checked against explicit forward passes of tiny VLMs.

Tiny LLaVA and Qwen2-VL models are saved to a temporary directory, loaded through
``prefscore.load("q-align", ...)``, and every score is compared with one computed here from a
separate forward pass and the formula. The official mPLUG-Owl2 checkpoints (run natively) are
tested against the official code's recorded outputs in ``test_qalign_official.py``.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prefscore
from prefscore.errors import ModelSourceError, ScoringError
from conftest import assert_close_paths
from prefscore.metrics.qalign_backends import QAlignBackendError
from prefscore.metrics.qalign_video import read_video_frames, sample_indices

QUESTION = "How would you rate the quality of this image?"
ANSWER = "The quality of the image is"
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
W15 = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
BACKGROUND = (122, 116, 104)  # int(255 * OpenAI CLIP mean)


# -- tiny models ---------------------------------------------------------------------------------
def llama_like_tokenizer(extra_special: dict | None = None):
    """A SentencePiece-like (Metaspace) WordPiece tokenizer with a BOS, as LLaMA: 'superb' and
    'super' are two tokens each ('▁sup' + '##erb' / '##er')."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    words = ("USER: ASSISTANT: How would you rate the quality aesthetics of this image video ? The is "
             "excellent good fair poor bad sup").split()
    vocab = {t: i for i, t in enumerate(["[UNK]", "<s>", "</s>", "<pad>", "<image>", "\n", "?", "▁"])}
    for w in words:
        vocab.setdefault("▁" + w, len(vocab))
    for piece in ("##erb", "##er"):
        vocab[piece] = len(vocab)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Split("?", "isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<image>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]",
                                   pad_token="<pad>", **(extra_special or {}))


LLAVA_TEMPLATE = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
                  "{% else %}{{ '\\n<image>' }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = llama_like_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       pad_token_id=3, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=4, projector_hidden_act="gelu",
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # make the level logits spread out
        model.lm_head.weight.mul_(10)
    images = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, num_additional_image_tokens=1,
                               vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE)
    root = tmp_path_factory.mktemp("llava")
    model.save_pretrained(root)
    processor.save_pretrained(root)
    return root


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'text' %}{{ c['text'] }}{% else %}<|vision_start|><|image_pad|><|vision_end|>"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{QUESTION} {ANSWER} excellent good fair poor bad"] * 50 + ["user assistant"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=QWEN_TEMPLATE, padding_side="left")
    ids = {s: fast.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(fast), max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(1)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    root = tmp_path_factory.mktemp("qwen2vl")
    model.save_pretrained(root)
    fast.save_pretrained(root)
    Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}).save_pretrained(root)
    return root


# -- inputs ---------------------------------------------------------------------------------------
def rgb(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def pad_square(image: Image.Image) -> Image.Image:
    """The official expand2square, written out: centred, offset (long - short) // 2."""
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def write_video(path: Path, levels: list[int], rate: Fraction, size: int = 32) -> None:
    """A lossless FFV1 clip whose frame k is the flat grey levels[k]."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p"
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), level, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def expected_from_logits(level_logits: torch.Tensor, weights=W15) -> np.ndarray:
    return torch.softmax(level_logits.double(), -1).numpy() @ weights


# -- LLaVA -----------------------------------------------------------------------------------------
def llava_reference(root: Path, samples: list[list[Image.Image]], level_tokens: list[str]) -> np.ndarray:
    """One sample at a time through transformers' own LlavaProcessor and the model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(root)
    model = AutoModelForImageTextToText.from_pretrained(root).eval()
    ids = processor.tokenizer.convert_tokens_to_ids(level_tokens)
    out = []
    for frames in samples:
        text = f"USER: {QUESTION}" + "\n<image>" * len(frames) + f"\nASSISTANT: {ANSWER}"
        inputs = processor(text=[text], images=[[pad_square(f) for f in frames]], return_tensors="pt")
        with torch.no_grad():
            out.append(model(**inputs).logits[0, -1, ids])
    return expected_from_logits(torch.stack(out))


def test_llava_matches_explicit_forward(llava_dir):
    images = [rgb(50, 30, 0), rgb(28, 28, 1), rgb(20, 64, 2)]
    metric = prefscore.load("q-align", model=llava_dir)
    assert metric.backend._model is None  # weights load lazily
    scores = metric.score(images)
    expected = llava_reference(llava_dir, [[im] for im in images], ["▁" + w for w in LEVELS])
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(scores) > 0.005  # the tiny model really distinguishes the images
    probs = metric.level_probabilities(images)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(probs @ W15, scores, atol=1e-9)
    assert metric.level_probabilities(images[0]).shape == (5,)
    # scorer.py's weights: [0, 1], and s_15 = 1 + 4 s_01
    metric01 = prefscore.load("q-align", model=llava_dir, scale="0-1")
    np.testing.assert_allclose(1 + 4 * metric01.score(images), scores, atol=1e-6)
    assert metric01.spec.output_range == (0.0, 1.0) and metric.spec.output_range == (1.0, 5.0)


def test_multi_token_level_word_uses_first_subtoken(llava_dir):
    levels = ("superb", "good", "fair", "poor", "bad")
    metric = prefscore.load("q-align", model=llava_dir, levels=levels)
    tok = metric.backend.tokenizer
    assert tok.tokenize(" superb") == ["▁sup", "##erb"]
    assert metric.level_token_ids == tok.convert_tokens_to_ids(["▁sup", "▁good", "▁fair", "▁poor", "▁bad"])
    images = [rgb(40, 30, 3), rgb(30, 40, 4)]
    expected = llava_reference(llava_dir, [[im] for im in images], ["▁sup", "▁good", "▁fair", "▁poor", "▁bad"])
    np.testing.assert_allclose(metric.score(images), expected, atol=1e-5)
    with pytest.raises(ValueError, match="start with the same token '▁sup'"):
        prefscore.load("q-align", model=llava_dir, levels=("superb", "super", "fair", "poor", "bad"))


def test_llava_video_frames_and_padding(llava_dir, tmp_path):
    """Videos of different lengths in one batch (right padding) score as they do alone."""
    short, long = tmp_path / "short.mkv", tmp_path / "long.mkv"
    write_video(short, [40, 200, 90, 10], Fraction(2))  # 2 s at 2 fps -> frames 0, 2
    write_video(long, [30, 60, 90, 120, 150, 180, 210, 240, 250], Fraction(3))  # 3 s -> frames 0, 3, 6
    metric = prefscore.load("q-align", model=llava_dir, task="video-quality")
    assert metric.question == "How would you rate the quality of this video?"
    frames = [read_video_frames(short, "short"), read_video_frames(long, "long")]
    assert [len(f) for f in frames] == [2, 3]
    batched = metric.score([short, long], batch_size=2)
    alone = np.array([metric.score(short), metric.score(long)])
    assert_close_paths(batched, alone)  # batched vs alone
    # explicit forward: all frames of a video, one image token each, video wording of the prompt
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(llava_dir).eval()
    ids = processor.tokenizer.convert_tokens_to_ids(["▁" + w for w in LEVELS])
    logits = []
    for f in frames:
        text = ("USER: How would you rate the quality of this video?" + "\n<image>" * len(f)
                + "\nASSISTANT: The quality of the video is")
        inputs = processor(text=[text], images=[f], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits[0, -1, ids])
    np.testing.assert_allclose(batched, expected_from_logits(torch.stack(logits)), atol=1e-5)
    # a list of frames is a video too (used as given); an image is a one-frame video
    assert_close_paths(metric.score([frames[0]]), batched[:1])
    still = tmp_path / "still.png"
    frames[1][0].save(still)
    assert_close_paths(metric.score([still, frames[1][0]]), metric.score([[frames[1][0]]] * 2))


# -- Qwen2-VL ------------------------------------------------------------------------------------
def qwen_reference(root: Path, images: list[Image.Image], padding_side: str) -> np.ndarray:
    """All images in one batch padded on ``padding_side``, inputs built by hand."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root)
    processor = AutoImageProcessor.from_pretrained(root)
    model = AutoModelForImageTextToText.from_pretrained(root).eval()
    vision = processor(images=[pad_square(im) for im in images], return_tensors="pt")
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    rows = []
    for thw in vision["image_grid_thw"]:
        n = int(thw.prod()) // 4
        text = (f"<|im_start|>user\n{QUESTION}<|vision_start|>" + "<|image_pad|>" * n
                + f"<|vision_end|><|im_end|>\n<|im_start|>assistant\n{ANSWER}")
        rows.append(tok(text)["input_ids"])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if padding_side == "right" else slice(width - len(r), width)
        input_ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=(input_ids == pad_id).int(),
                       **vision).logits
    last = mask.sum(1) - 1 if padding_side == "right" else torch.full((len(rows),), width - 1)
    level_ids = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in LEVELS]
    assert all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in LEVELS)
    return expected_from_logits(logits[torch.arange(len(rows)), last][:, level_ids])


def test_qwen2vl_batching_and_padding_side(qwen_dir):
    images = [rgb(60, 40, 5), rgb(120, 120, 6), rgb(30, 90, 7)]  # different visual token counts
    metric = prefscore.load("q-align", model=qwen_dir)
    tok = metric.backend.tokenizer
    # the level tokens are the 'Ġword' pieces that follow "is", not the bare words
    assert tok.convert_ids_to_tokens(metric.level_token_ids) == ["Ġ" + w for w in LEVELS]
    batched = metric.score(images, batch_size=3)
    singles = np.array([metric.score(im) for im in images])
    assert_close_paths(batched, singles)  # batched vs one by one
    np.testing.assert_allclose(batched, qwen_reference(qwen_dir, images, "right"), atol=1e-5)
    np.testing.assert_allclose(batched, qwen_reference(qwen_dir, images, "left"), atol=1e-5)
    assert np.ptp(batched) > 0.005


def test_qwen2vl_level_words_sharing_a_first_token_are_refused(qwen_dir):
    with pytest.raises(ValueError, match="start with the same token"):
        prefscore.load("q-align", model=qwen_dir, levels=("zzz", "zzy", "fair", "poor", "bad"))


# -- video sampling ------------------------------------------------------------------------------
def test_sample_indices_follow_the_official_formula():
    assert sample_indices(17, 7.5) == [0, 7]
    assert sample_indices(75, 25.0) == [0, 25, 50]
    assert sample_indices(24, 25.0) == []
    assert sample_indices(90, 29.97) == [0, 29, 59]


def test_read_video_frames_one_per_second(tmp_path):
    path = tmp_path / "ramp.mkv"
    levels = [10 * k for k in range(17)]
    write_video(path, levels, Fraction(15, 2))  # 17 frames at 7.5 fps: int(17 / 7.5) = 2 frames, indices 0, 7
    frames = read_video_frames(path, "ramp")
    assert len(frames) == 2 and all(f.mode == "RGB" and f.size == (32, 32) for f in frames)
    means = [float(np.asarray(f).mean()) for f in frames]
    np.testing.assert_allclose(means, [levels[0], levels[7]], atol=2)
    assert len(read_video_frames(path.read_bytes(), "bytes")) == 2
    short = tmp_path / "short.mkv"
    write_video(short, [50] * 5, Fraction(10))
    with pytest.raises(prefscore.ImageError, match="shorter than one second"):
        read_video_frames(short, "short")


# -- errors, options, memory ---------------------------------------------------------------------
def test_bad_items_do_not_lose_the_batch(llava_dir, tmp_path):
    good = [rgb(40, 30, 17), rgb(30, 30, 18)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    metric = prefscore.load("q-align", model=llava_dir)
    alone = metric.score(good)
    with pytest.raises(ScoringError) as info:
        metric.score([good[0], corrupt, good[1]])
    assert [e[0] for e in info.value.errors] == [1] and "corrupt.png" in str(info.value)
    assert_close_paths(info.value.scores[[0, 2]], alone)
    assert np.isnan(info.value.scores[1])
    probs = metric.level_probabilities([good[0], corrupt], on_error="nan")
    assert np.isnan(probs[1]).all() and np.isfinite(probs[0]).all()

    video = prefscore.load("q-align", model=llava_dir, task="video-quality")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    clip = tmp_path / "ok.mkv"
    write_video(clip, [100, 100, 100], Fraction(3))
    out = video.score([broken, clip, tmp_path / "missing.mp4"], on_error="nan")
    assert np.isnan(out[0]) and np.isfinite(out[1]) and np.isnan(out[2])
    with pytest.raises(ScoringError, match="broken.mp4: cannot (open|decode) video"):
        video.score([broken, clip])
    with pytest.raises(ScoringError, match="a list of frames is a video"):
        metric.score([[good[0], good[1]]])


def test_options_are_validated(llava_dir):
    with pytest.raises(TypeError, match="no option.*bogus"):
        prefscore.load("q-align", model=llava_dir, bogus=1)
    with pytest.raises(ValueError, match="unknown q-align task"):
        prefscore.load("q-align", model=llava_dir, task="sharpness")
    with pytest.raises(ValueError, match="need explicit weights"):
        prefscore.load("q-align", model=llava_dir, levels=("good", "bad"))
    with pytest.raises(ValueError, match="2 finite numbers"):
        prefscore.load("q-align", model=llava_dir, levels=("good", "bad"), weights=(1, 0, 3))
    with pytest.raises(prefscore.PromptError):
        prefscore.load("q-align", model=llava_dir).score([rgb(20, 20, 0)], "a prompt")
    custom = prefscore.load("q-align", model=llava_dir, levels=("good", "bad"), weights=(1, -1), task="aesthetic",
                            question="Is this image nice?", answer_prefix="This image is")
    assert custom.task == "aesthetics" and custom.spec.output_range == (-1.0, 1.0)
    image = rgb(30, 20, 19)
    p = custom.level_probabilities(image)
    np.testing.assert_allclose(custom.score(image), p[0] - p[1], atol=1e-9)
    text = custom.backend.prompt_text(1)
    assert text == "USER: Is this image nice?\n<image>\nASSISTANT: This image is"


def test_weights_load_lazily_and_missing_weights_are_reported(llava_dir, tmp_path):
    light = tmp_path / "no-weights"
    light.mkdir()
    for f in llava_dir.iterdir():
        if f.suffix != ".safetensors":
            (light / f.name).write_bytes(f.read_bytes())
    metric = prefscore.load("q-align", model=light)  # reads config, tokenizer, processor only
    assert metric.level_token_ids == metric.backend.tokenizer.convert_tokens_to_ids(["▁" + w for w in LEVELS])
    with pytest.raises(ModelSourceError, match="cannot load the model"):
        metric.score(rgb(20, 20, 0))


def test_bfloat16_runs_close_to_float32(qwen_dir):
    images = [rgb(40, 40, 20), rgb(60, 30, 21)]
    full = prefscore.load("q-align", model=qwen_dir).score(images)
    half = prefscore.load("q-align", model=qwen_dir, dtype="bfloat16")
    assert next(half.load_model().parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(half.score(images), full, atol=0.15)


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(QAlignBackendError, match="model type 'bert' is not supported"):
        prefscore.load("q-align", model=tmp_path)


def test_offline_hub_id_fails_clearly():
    with pytest.raises(ModelSourceError, match="q-future/one-align"):
        prefscore.load("q-align")


def test_cli_scores_a_folder_of_videos(llava_dir, tmp_path):
    """`prefscore score DIR -m q-align --option task=video-quality` reads videos itself; bad files are rows."""
    from typer.testing import CliRunner

    from prefscore.cli import app

    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "a.mkv", [40, 200, 90, 10], Fraction(2))
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("x")
    out = tmp_path / "v.jsonl"
    result = CliRunner().invoke(app, ["score", str(folder), "-m", "q-align", "--model", str(llava_dir),
                                      "--option", "task=video-quality", "-o", str(out)])
    assert result.exit_code == 3, result.output  # finished, with an error row (broken.mp4)
    rows = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a.mkv", "broken.mp4"}
    expected = prefscore.load("q-align", model=llava_dir, task="video-quality").score(folder / "a.mkv")
    assert rows["a.mkv"]["q-align"] == pytest.approx(float(expected), abs=1e-6)
    assert rows["broken.mp4"]["q-align"] is None and rows["broken.mp4"]["error"]
