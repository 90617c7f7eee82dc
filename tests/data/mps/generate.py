"""Regenerate the tiny MPS test set in this folder with the official Kwai-Kolors/MPS code.

Run by ``generate.sh`` (which makes the official code's virtualenv) as::

    python tests/data/mps/generate.py OFFICIAL_CHECKOUT [PICKSCORE_FIXTURE_MODEL_DIR]

``OFFICIAL_CHECKOUT`` is a checkout of github.com/Kwai-Kolors/MPS (its ``trainer/`` package is
imported from there; none of it is copied here). The second argument is a folder holding the real
CLIP BPE in the laion CLIP-ViT-H-14 tokenizer format (default: ``../shared/fixtures/pickscore/model``
beside the repository), from which a reduced vocabulary is cut. See README.md for what is written.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SEED = 20240617
IMAGE_SEED = 5
CONDITION = ("light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, "
             "instance, texture, quantity, attributes, position, number, location, word, things.")
PROMPTS = [
    "a watercolor painting of a lighthouse at dusk",
    "A photo of a cat wearing a tiny wizard hat, highly detailed, 4k",
    "",
    "Café «crème» — 東京の夜景 🌃 naïve façade, ½ price!",
    "  MIXED   Case\tprompt\nwith   extra whitespace  ",
    ("an extremely long prompt describing a sprawling fantasy city at sunrise, with towering spires of glass and "
     "gold, winding rivers crossed by stone bridges, markets full of merchants selling spices, silks and strange "
     "fruit, airships drifting between the clouds, children chasing kites along the walls, old wizards reading "
     "in quiet libraries, and far beyond the gates a range of snowy mountains glowing pink in the early light"),
]
# (text: hidden, intermediate, layers, heads), (vision: hidden, intermediate, layers, heads, patch), projection
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
            hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1)
VISION = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=224,
              patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
PROJECTION = 32
CROSS = dict(dim=PROJECTION, layer_num=2, dim_head=8, heads=4)  # the official Cross_model at tiny size
LOGIT_SCALE = 3.4
TOKEN_STD = 1.0
TOKENIZER_COPY = ["tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]


# -- tokenizer: the real CLIP BPE restricted to the merges the texts need -----------------------------
def bpe_merges_used(word: str, ranks: dict) -> list[tuple[str, str]]:
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.__getitem__)
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def write_tokenizer(full_dir: Path, out: Path, texts: list[str]) -> int:
    from transformers import CLIPTokenizerFast

    full = CLIPTokenizerFast.from_pretrained(str(full_dir))
    lines = (full_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(l.split(" ")) for l in lines if l]
    ranks = {m: i for i, m in enumerate(merges)}
    backend = full.backend_tokenizer
    keep = set()
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)):
            keep.update(bpe_merges_used(word, ranks))
    kept = [m for m in merges if m in keep]
    full_vocab = json.loads((full_dir / "vocab.json").read_text(encoding="utf-8"))
    by_id = sorted(full_vocab, key=full_vocab.__getitem__)
    tokens = by_id[:512] + ["".join(m) for m in kept] + ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept), encoding="utf-8")
    for name in TOKENIZER_COPY:
        shutil.copy(full_dir / name, out / name)
    small = CLIPTokenizerFast.from_pretrained(str(out))  # slow -> fast conversion, as the laion repo's tokenizer.json
    small.backend_tokenizer.save(str(out / "tokenizer.json"))
    small = CLIPTokenizerFast.from_pretrained(str(out))
    for text in texts:  # the reduced vocabulary cuts every text into the pieces the full one does
        a = full.convert_ids_to_tokens(full(text, truncation=True, max_length=77).input_ids)
        b = small.convert_ids_to_tokens(small(text, truncation=True, max_length=77).input_ids)
        assert a == b, (text, a, b)
    return len(tokens)


# -- images that stress preprocessing ------------------------------------------------------------
def _rgb(rng, w, h):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 100 * np.sin((x + y) / 9.0)], -1)
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def write_images(out: Path) -> list[str]:
    rng = np.random.default_rng(IMAGE_SEED)
    img = out / "images"
    img.mkdir(exist_ok=True)
    Image.fromarray(_rgb(rng, 320, 200)).save(img / "landscape.png")
    Image.fromarray(_rgb(rng, 150, 260)).save(img / "portrait.png")
    Image.fromarray(_rgb(rng, 1, 1)).save(img / "pixel.png")
    Image.fromarray(_rgb(rng, 200, 200)[..., 0]).save(img / "gray.png")  # mode L
    Image.fromarray(_rgb(rng, 160, 120)).quantize(48, method=Image.Quantize.MEDIANCUT).save(img / "palette.png")
    rgba = np.concatenate([_rgb(rng, 180, 120), rng.integers(0, 256, (120, 180, 1), dtype=np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(img / "rgba.png")
    Image.fromarray(_rgb(rng, 210, 170)).convert("CMYK").save(img / "cmyk.jpg", quality=92)
    deep = (np.linspace(0, 65535, 140 * 230).reshape(140, 230) * rng.uniform(0.5, 1.0, (140, 230))).astype(np.uint16)
    Image.fromarray(deep).save(img / "deep16.png")  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"; nobody applies it
    Image.fromarray(_rgb(rng, 240, 130)).save(img / "exif_rotated.jpg", quality=90, exif=exif)
    big = Image.fromarray(_rgb(np.random.default_rng(IMAGE_SEED + 1), 1600, 1200)).filter(ImageFilter.GaussianBlur(2))
    big.save(img / "large.jpg", quality=85)
    good = img / "landscape.png"
    (img / "truncated.png").write_bytes(good.read_bytes()[:300])
    names = ["landscape.png", "portrait.png", "pixel.png", "gray.png", "palette.png", "rgba.png", "cmyk.jpg",
             "deep16.png", "exif_rotated.jpg", "large.jpg", "truncated.png"]
    for n in names[:-1]:
        Image.open(img / n).load()
    return names


# -- the official model at tiny size ---------------------------------------------------------------
def build_model(official: Path, out: Path, vocab_size: int, condition_ids: set[int]):
    sys.path.insert(0, str(official))
    from trainer.models.clip_model import CLIPModel as MPSModel, XCLIPModel
    from trainer.models.cross_modeling import Cross_model, LayerNorm as CrossNorm
    from transformers import CLIPConfig

    torch.manual_seed(SEED)
    config = CLIPConfig(text_config=dict(TEXT, vocab_size=vocab_size), vision_config=VISION, projection_dim=PROJECTION)
    with tempfile.TemporaryDirectory() as tmp:
        XCLIPModel(config).save_pretrained(tmp)  # CLIPModel(ckpt) builds its tower with from_pretrained(ckpt)
        config.save_pretrained(out)
        model = MPSModel(tmp)  # the official constructor (its Cross_model is CLIP-H sized: replaced below)
    model.cross_model = Cross_model(**CROSS)
    model.model.name_or_path = model.model.config._name_or_path = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # not the temp dir
    with torch.no_grad():
        for module in model.modules():  # non-trivial norms and biases everywhere
            if isinstance(module, (torch.nn.LayerNorm, CrossNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.05)
        model.model.logit_scale.fill_(LOGIT_SCALE)
        # With random weights every prompt token has some condition token it is similar to, and the
        # condition mask keeps all 77. A trained MPS keeps the prompt tokens related to the condition:
        # mimic that with one embedding dimension that dominates the projected features, positive for
        # the condition's tokens (and the special tokens), mostly negative for the others.
        emb = model.model.text_model.embeddings
        emb.token_embedding.weight.normal_(0.0, TOKEN_STD)
        emb.position_embedding.weight.normal_(0.0, TOKEN_STD / 2)
        gate = torch.empty(vocab_size).normal_(-6.0, 6.0)
        gate[sorted(condition_ids)] = 12.0
        emb.token_embedding.weight[:, 0] = gate
    model.half()  # the README feeds image_inputs.half(): the released model is float16
    for layer in model.cross_model.layers:  # a trained model carries the rotary table its forward cached
        layer[1].fn.get_rotary_embedding(1 + (VISION["image_size"] // VISION["patch_size"]) ** 2, torch.device("cpu"))
    torch.save(model, out / "MPS_overall_checkpoint.pth")  # the whole model object, as released
    return model


@contextmanager
def half_is_identity():
    """The README casts the image batch (and the mask) to float16 for a CUDA fp16 model; on CPU the
    model runs in float32 and these casts are no-ops."""
    original = torch.Tensor.half
    torch.Tensor.half = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.half = original


def main() -> None:
    official = Path(sys.argv[1]).resolve()
    full_tok = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO.parent / "shared" / "fixtures" / "pickscore" / "model"
    torch.set_num_threads(1)
    vocab_size = write_tokenizer(full_tok, HERE, PROMPTS + [CONDITION])
    names = write_images(HERE)
    from transformers import CLIPTokenizerFast

    condition_ids = set(CLIPTokenizerFast.from_pretrained(str(HERE))(CONDITION).input_ids)
    build_model(official, HERE, vocab_size, condition_ids)

    # -- the README's "Inference with MPS", on CPU in float32 ---------------------------------------
    from transformers import AutoTokenizer, CLIPImageProcessor

    image_processor = CLIPImageProcessor.from_pretrained(str(HERE))
    tokenizer = AutoTokenizer.from_pretrained(str(HERE), trust_remote_code=True)
    model = torch.load(HERE / "MPS_overall_checkpoint.pth", weights_only=False)  # torch>=2.6 needs weights_only=False
    model.eval().float()

    def process_image(path):
        image = Image.open(path)
        image = image.convert("RGB")
        return image_processor(image, return_tensors="pt")["pixel_values"]

    def tokenize(caption):
        return tokenizer(caption, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids

    def infer(images, prompt):
        image_inputs = torch.concatenate([process_image(images[0]), process_image(images[1])])
        text_inputs = tokenize(prompt)
        condition_inputs = tokenize(CONDITION)
        with torch.no_grad(), half_is_identity():
            text_features, image_0_features, image_1_features = model(text_inputs, image_inputs, condition_inputs)
            image_0_features = image_0_features / image_0_features.norm(dim=-1, keepdim=True)
            image_1_features = image_1_features / image_1_features.norm(dim=-1, keepdim=True)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            image_0_scores = model.logit_scale.exp() * torch.diag(torch.einsum("bd,cd->bc", text_features, image_0_features))
            image_1_scores = model.logit_scale.exp() * torch.diag(torch.einsum("bd,cd->bc", text_features, image_1_features))
            scores = torch.stack([image_0_scores, image_1_scores], dim=-1)
            probs = torch.softmax(scores, dim=-1)[0]
        return scores[0].tolist(), probs.tolist()

    def kept_tokens(prompt):  # how many prompt tokens the condition mask keeps (lines 116-120 of clip_model.py)
        with torch.no_grad():
            text_f, _ = model.model.get_text_features(tokenize(prompt))
            cond_f, _ = model.model.get_text_features(tokenize(CONDITION))
            sim = torch.einsum("b i d, b j d -> b j i", text_f, cond_f).max(dim=1, keepdim=True)[0]
            return int(((sim / sim.max()) > 0.01).sum())

    good, bad = [], []
    for n in names:  # images the official preprocessing cannot take go into pairs of their own
        try:
            process_image(HERE / "images" / n)
            good.append(n)
        except Exception:
            bad.append(n)
    cases = []
    for p_i, prompt in enumerate(PROMPTS):
        rotated = good[p_i % len(good):] + good[: p_i % len(good)]  # different partners for each prompt
        pairs = [rotated[i: i + 2] for i in range(0, len(rotated) - 1, 2)]
        if len(rotated) % 2:
            pairs.append([rotated[-1], rotated[0]])
        pairs += [[n, rotated[0]] for n in bad]
        for pair in pairs:
            case = {"prompt": prompt, "images": [f"images/{n}" for n in pair], "input_ids": tokenize(prompt)[0].tolist(),
                    "kept_tokens": kept_tokens(prompt)}
            try:
                case["scores"], case["probs"] = infer([HERE / case["images"][0], HERE / case["images"][1]], prompt)
            except Exception as exc:  # what the official code does with an unreadable image
                case["error"] = f"{type(exc).__name__}: {exc}"
            cases.append(case)
    with open(HERE / "cases.jsonl", "w") as fh:
        for case in cases:
            fh.write(json.dumps(case, ensure_ascii=False) + "\n")

    import PIL
    import transformers

    meta = {"seed": SEED, "image_seed": IMAGE_SEED, "text": TEXT, "vision": VISION, "projection_dim": PROJECTION,
            "cross_model": CROSS, "logit_scale": LOGIT_SCALE, "vocab_size": vocab_size, "stored_dtype": "float16",
            "condition": CONDITION, "condition_input_ids": tokenize(CONDITION)[0].tolist(), "images": names,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": __import__("tokenizers").__version__, "numpy": np.__version__,
                         "Pillow": PIL.__version__, "einops": __import__("einops").__version__}}
    (HERE / "set.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases, vocab {vocab_size}, kept tokens per prompt:",
          [c["kept_tokens"] for c in cases[:: len(cases) // len(PROMPTS)]])


if __name__ == "__main__":
    main()
