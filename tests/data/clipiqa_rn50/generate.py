"""Regenerate the tiny CLIP-IQA RN50 test set in this folder from OpenAI's official CLIP code.

Usage (the official code is NOT part of prefscore; give the folder that holds its ``clip/``)::

    git clone https://github.com/openai/CLIP /tmp/openai-clip   # or any checkout
    python tests/data/clipiqa_rn50/generate.py /tmp/openai-clip

Only ``clip/model.py`` and ``clip/simple_tokenizer.py`` (+ its ``bpe_simple_vocab_16e6.txt.gz``) are
loaded, by file path, so ``clip/__init__.py`` (which needs torchvision) is never imported. Needs
torch, numpy, Pillow, ftfy, regex and transformers (for the HF tokenizer, as torchmetrics/piq use).
See README.md for what is written and why.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED = 20240611
EMBED_DIM = 32
IMAGE_RESOLUTION = 64  # attention-pool grid 2x2
VISION_LAYERS = (1, 2, 1, 1)
VISION_WIDTH = 8  # -> attention-pool width 256, 256 // 64 = 4 heads (OpenAI's width * 32 // 64)
CONTEXT_LENGTH = 77
TEXT_WIDTH = 64  # -> 64 // 64 = 1 head (OpenAI's rule)
TEXT_LAYERS = 1
TOKEN_STD = 0.002
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# torchmetrics' 16 built-in CLIP-IQA pairs (positive first), the sentences the tiny vocabulary covers.
PAIRS = {
    "quality": ("Good photo.", "Bad photo."),
    "brightness": ("Bright photo.", "Dark photo."),
    "noisiness": ("Clean photo.", "Noisy photo."),
    "colorfullness": ("Colorful photo.", "Dull photo."),
    "sharpness": ("Sharp photo.", "Blurry photo."),
    "contrast": ("High contrast photo.", "Low contrast photo."),
    "complexity": ("Complex photo.", "Simple photo."),
    "natural": ("Natural photo.", "Synthetic photo."),
    "happy": ("Happy photo.", "Sad photo."),
    "scary": ("Scary photo.", "Peaceful photo."),
    "new": ("New photo.", "Old photo."),
    "warm": ("Warm photo.", "Cold photo."),
    "real": ("Real photo.", "Abstract photo."),
    "beautiful": ("Beautiful photo.", "Ugly photo."),
    "lonely": ("Lonely photo.", "Sociable photo."),
    "relaxing": ("Relaxing photo.", "Stressful photo."),
}


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bpe_merges_used(word: tuple[str, ...], ranks: dict) -> list[tuple[str, str]]:
    """The merges byte-level BPE applies to ``word`` (lowest rank first, all occurrences at once)."""
    used = []
    word = list(word)
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word, word[1:]) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.__getitem__)
        used.append(best)
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return used


def write_tokenizer(tok_module, bpe_path: Path, sentences: list[str]) -> int:
    """A CLIP tokenizer restricted to the merges the sentences need; returns the vocabulary size.

    Ids follow CLIP's layout: 256 byte symbols, the same with ``</w>``, the kept merges in their
    original order, then ``<|startoftext|>`` and ``<|endoftext|>`` (the highest id, as in CLIP).
    BPE with a subset of merges that contains every merge applied to a word gives the same pieces
    for that word, so these sentences tokenize exactly as with the full vocabulary.
    """
    official = tok_module.SimpleTokenizer(str(bpe_path))
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    ranks = {m: i for i, m in enumerate(merges)}
    keep = set()
    for sentence in sentences:
        text = tok_module.whitespace_clean(tok_module.basic_clean(sentence)).lower()
        for token in official.pat.findall(text):
            symbols = "".join(official.byte_encoder[b] for b in token.encode("utf-8"))
            keep.update(bpe_merges_used(tuple(symbols[:-1]) + (symbols[-1] + "</w>",), ranks))
    kept = [m for m in merges if m in keep]
    byte_symbols = list(tok_module.bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in kept]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (HERE / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (HERE / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept), encoding="utf-8")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    (HERE / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {**specials, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": CONTEXT_LENGTH, "tokenizer_class": "CLIPTokenizer"}
    (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    # cross-check: the HF tokenizer on the tiny vocabulary gives the official tokenizer's pieces
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(HERE))
    for sentence in sentences:
        pieces = hf.convert_ids_to_tokens(hf(sentence)["input_ids"])
        ref = [official.decoder[i] for i in official.encode(sentence)]
        assert pieces == ["<|startoftext|>"] + ref + ["<|endoftext|>"], (sentence, pieces, ref)
    return len(vocab)


def make_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(SEED)

    def rgb(h, w):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1), 128 + 60 * np.sin(xx / 5.0 + yy / 7.0)], -1)
        return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)

    images = {
        "native64.png": Image.fromarray(rgb(64, 64), "RGB"),
        "wide.png": Image.fromarray(rgb(90, 150), "RGB"),
        "tall.jpg": Image.fromarray(rgb(120, 72), "RGB"),
        "gray.png": Image.fromarray(rgb(80, 80)[:, :, 0], "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb(70, 100), rng.integers(0, 256, (70, 100), dtype=np.uint8)]), "RGBA"),
        "palette.png": Image.fromarray(rgb(96, 96), "RGB").quantize(colors=32),
        "min31.png": Image.fromarray(rgb(33, 31), "RGB"),
    }
    for name, image in images.items():
        if name.endswith(".jpg"):
            image.save(HERE / name, quality=90)
        else:
            image.save(HERE / name)
    # reread so that the JPEG is scored as decoded
    return {name: Image.open(HERE / name) for name in images}


def randomise_batchnorm(model: torch.nn.Module, gen: torch.Generator) -> None:
    """OpenAI's init zeros every ``bn3.weight`` and leaves running stats at 0/1: make them all matter."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=gen)
            module.bias.data = 0.1 * torch.randn(n, generator=gen)
            module.running_mean = 0.1 * torch.randn(n, generator=gen)
            module.running_var = 0.5 + torch.rand(n, generator=gen)


def attention_pool(attnpool, x: torch.Tensor, pos_embedding: bool) -> torch.Tensor:
    """The CLIP-IQA pooling (IceClear/CLIP-IQA model.py:66-71, piq, pyiqa) with the official weights:
    flatten, prepend the mean token, add the positional embedding only if ``pos_embedding``,
    multi-head attention of all tokens, token 0."""
    x = x.flatten(start_dim=2).permute(2, 0, 1)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
    if pos_embedding:
        x = x + attnpool.positional_embedding[:, None, :]
    out, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=attnpool.num_heads,
        q_proj_weight=attnpool.q_proj.weight, k_proj_weight=attnpool.k_proj.weight, v_proj_weight=attnpool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([attnpool.q_proj.bias, attnpool.k_proj.bias, attnpool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=attnpool.c_proj.weight, out_proj_bias=attnpool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )
    return out[0]


def official_trunk(visual, x: torch.Tensor) -> torch.Tensor:
    """The official ModifiedResNet up to (not including) its attention pool, block by block."""
    x = x.type(visual.conv1.weight.dtype)
    x = visual.relu1(visual.bn1(visual.conv1(x)))
    x = visual.relu2(visual.bn2(visual.conv2(x)))
    x = visual.relu3(visual.bn3(visual.conv3(x)))
    x = visual.avgpool(x)
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def to_pixels(image: Image.Image) -> torch.Tensor:
    """Pillow convert('RGB') -> /255 -> OpenAI mean/std, no resize (torchmetrics' clip_iqa branch)."""
    array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    x = array.float() / 1.0 / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def main(official_root: str) -> None:
    root = Path(official_root)
    model_mod = load_module(root / "clip" / "model.py", "official_clip_model")
    tok_mod = load_module(root / "clip" / "simple_tokenizer.py", "official_clip_tokenizer")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    sentences = [s for pair in PAIRS.values() for s in pair]
    vocab_size = write_tokenizer(tok_mod, root / "clip" / "bpe_simple_vocab_16e6.txt.gz", sentences)

    model = model_mod.CLIP(EMBED_DIM, IMAGE_RESOLUTION, VISION_LAYERS, VISION_WIDTH, None,
                           CONTEXT_LENGTH, vocab_size, TEXT_WIDTH, TEXT_WIDTH // 64, TEXT_LAYERS)
    randomise_batchnorm(model, gen)
    # OpenAI's token-embedding std (0.02) makes the random anchors of a pair nearly orthogonal and
    # every 100 * cos softmax saturate; smaller token embeddings keep the test probabilities informative
    model.token_embedding.weight.data = TOKEN_STD * torch.randn(model.token_embedding.weight.shape, generator=gen)
    # store float16 (as OpenAI's released RN50.pt) and compute with exactly those values in float32
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, HERE / "RN50.pt")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model = model.float().eval()

    # build_model() must rebuild the same architecture from the saved tensors
    rebuilt = model_mod.build_model({k: v.float() if v.is_floating_point() else v for k, v in state.items()}).float()
    assert [m.__class__.__name__ for m in rebuilt.modules()] == [m.__class__.__name__ for m in model.modules()]

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(HERE))
    ids = torch.zeros(len(sentences), CONTEXT_LENGTH, dtype=torch.long)
    for i, tokens in enumerate(hf(sentences)["input_ids"]):  # torchmetrics: zero-padded to 77
        ids[i, : len(tokens)] = torch.tensor(tokens)

    images = make_images()
    out = {"sentences": sentences, "pairs": PAIRS, "token_ids": [row[row > 0].tolist() for row in ids], "images": {}}
    with torch.no_grad():
        text = model.encode_text(ids).float()
        out["text_features"] = text.tolist()
        anchors = text / text.norm(dim=-1, keepdim=True)
        for name, image in images.items():
            pixels = to_pixels(image)
            feats = attention_pool(model.visual.attnpool, official_trunk(model.visual, pixels), False).float()
            img = feats / feats.norm(dim=-1, keepdim=True)
            probs = (100 * img @ anchors.t()).view(1, -1, 2).softmax(-1)[0, :, 0]
            entry = {"size": list(image.size), "mode": image.mode, "features_no_pos": feats[0].tolist(),
                     "scores": dict(zip(PAIRS, probs.tolist()))}
            if image.size == (IMAGE_RESOLUTION, IMAGE_RESOLUTION):
                official = model.encode_image(pixels).float()
                entry["features_official_encode_image"] = official[0].tolist()
                # sanity: the pooling above, with the table added, is the official forward
                mine = attention_pool(model.visual.attnpool, official_trunk(model.visual, pixels), True)
                assert torch.allclose(mine, official, rtol=1e-5, atol=1e-6), (mine - official).abs().max()
            out["images"][name] = entry
    (HERE / "expected.json").write_text(json.dumps(out, indent=1))
    meta = {"seed": SEED, "embed_dim": EMBED_DIM, "image_resolution": IMAGE_RESOLUTION, "vision_layers": VISION_LAYERS,
            "vision_width": VISION_WIDTH, "context_length": CONTEXT_LENGTH, "vocab_size": vocab_size,
            "transformer_width": TEXT_WIDTH, "transformer_heads": TEXT_WIDTH // 64, "transformer_layers": TEXT_LAYERS, "token_embedding_std": TOKEN_STD,
            "torch": torch.__version__, "stored_dtype": "float16"}
    (HERE / "set.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))
    for name, entry in out["images"].items():
        print(name, entry["size"], " ".join(f"{v:.3f}" for v in entry["scores"].values()))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
