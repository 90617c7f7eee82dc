"""Ground truth for `vqascore` (CLIP-FlanT5): t2v-metrics 3.0's own scoring code on a tiny seeded model.

Run by generate.sh inside its own virtualenv (t2v-metrics==3.0 --no-deps, transformers 4.49.0,
numpy 1.26.4, Pillow 10.0.0, torch 2.13.0 CPU). Writes, next to this file:

* ``clip-flant5/``: the ``zhiqiulin/clip-flant5-xxl`` layout at tiny sizes: ``config.json`` with
  ``model_type: clip_t5`` and the ``mm_*`` fields, ``generation_config.json``, sharded bfloat16
  ``pytorch_model-*.bin`` + index saved by the official ``CLIPT5ForConditionalGeneration.save_pretrained``,
  and the FlanT5 tokenizer files the published repo carries (``spiece.model`` trained here with
  SentencePiece in T5's format, ``tokenizer.json`` converted by transformers 4.49,
  ``tokenizer_config.json``, ``special_tokens_map.json``);
* ``clip-vit-large-patch14-336/``: the vision tower repo (``config.json``,
  ``preprocessor_config.json``, ``model.safetensors``) at tiny sizes, 336 px as the real one;
* ``images/``, ``cases.jsonl`` (image, prompt, score), ``set.json``.

The official code fetches ``zhiqiulin/clip-flant5-xxl``, ``google/flan-t5-xxl`` and
``openai/clip-vit-large-patch14-336`` by hub id: the model and tokenizer paths of its
``CLIP_T5_MODELS`` table are pointed at the local folders, and the vision tower id (written in
the model's config.json, as published) is served from a throw-away offline hub cache holding the
tiny tower. The only change to the computation: the official loader casts the model to bfloat16
(``model.to(device, dtype=torch.bfloat16)``), which on a CPU fails in the projector (float32
features meet bfloat16 weights; the official code relies on CUDA autocast). Every weight here is
exactly representable in bfloat16, so the loader's cast loses nothing, and the model is cast back
to float32 right after it: the recorded scores are the official computation in float32.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED = 20241205
QUESTION = 'Does this figure show "{}"? Please answer yes or no.'

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=336,
              patch_size=14, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
T5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
          layer_norm_epsilon=1e-6, dropout_rate=0.1, tie_word_embeddings=False, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1, is_encoder_decoder=True)
PADDED_VOCAB_EXTRA = 28  # flan-t5: vocab_size 32128 in config.json, 32100 ids in the tokenizer

PROMPTS = [
    "a red fox in the snow",
    "",
    "Two dogs and a cat sitting on a bench, photographed at sunset with a wide-angle lens.",
    "café naïve – “quoted” 東京 🦊 Ünïcödé\tTABS   and  spaces\nnew line",
    # about 2250 tokens: beyond the 2048-id context, which the official code cuts
    " ".join(["a very long prompt about a city street with many cars people trees and buildings"] * 140),
]


def t2v_root(venv_site: Path) -> Path:
    return venv_site / "t2v_metrics"


def import_official():
    """Import t2v-metrics' CLIP-T5 scorer without the package __init__ files, which import every
    model family (LAVIS, open_clip, decord, ...). The modules themselves are imported unchanged."""
    import importlib.util

    spec = importlib.util.find_spec("t2v_metrics")
    root = Path(spec.submodule_search_locations[0])
    for name, sub in [("t2v_metrics", ""), ("t2v_metrics.models", "models"),
                      ("t2v_metrics.models.vqascore_models", "models/vqascore_models")]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / sub)]
        sys.modules[name] = mod
    from t2v_metrics.models.vqascore_models import clip_t5_model, mm_utils  # noqa: F401
    from t2v_metrics.score import Score
    from t2v_metrics.models.vqascore_models.clip_t5.model import CLIPT5Config, CLIPT5ForConditionalGeneration

    return root, clip_t5_model, Score, CLIPT5Config, CLIPT5ForConditionalGeneration


def bf16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded non-trivial weights: norms 1 + N(0, 0.2), biases N(0, 0.1), matrices N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                base = 1.0 if ("norm" in name or "layernorm" in name or "layer_norm" in name) and name.endswith("weight") else 0.0
                scale = 0.2 if base else 0.1
                value = base + scale * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p.shape[-1] if p.dim() == 2 else int(np.prod(p.shape[1:]))
                value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
                if "embed" in name or name.startswith("shared") or "relative_attention_bias" in name:
                    value = torch.randn(p.shape, generator=gen) * 0.5
            p.copy_(bf16_exact(value))


# -- tokenizer ---------------------------------------------------------------------------------
def train_spiece(out: Path) -> Path:
    import sentencepiece as spm

    words = ("a the of and in on with at to is are this that figure show does please answer yes no Yes No "
             "chat between curious user an artificial intelligence assistant gives helpful detailed polite answers "
             "user's questions USER ASSISTANT red fox snow dog dogs cat bench sunset wide angle lens photographed "
             "two sitting very long prompt about city street many cars people trees buildings photo image "
             "blue green sky water mountain river house car man woman child tall small big quick brown jumps over lazy "
             "café naïve quoted new line tabs spaces").split()
    rng = np.random.default_rng(SEED)
    lines = []
    for _ in range(3000):
        n = int(rng.integers(3, 14))
        lines.append(" ".join(rng.choice(words, n)) + rng.choice([".", "?", "!", ",", ""]))
    lines += ['Does this figure show "a dog"? Please answer yes or no.'] * 50
    lines += ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions. USER: ASSISTANT:"] * 50
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    prefix = out / "spiece"
    # T5's spiece.model: unigram, pad 0, eos 1, unk 2, no bos, nmt_nfkc normalisation
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=400, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="nmt_nfkc", character_coverage=1.0, seed_sentencepiece_size=100000,
        num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )
    return prefix.with_suffix(".model")


def write_tokenizer(tok_dir: Path, work: Path):
    from transformers import T5Tokenizer, T5TokenizerFast

    spiece = train_spiece(work)
    tok_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(spiece, tok_dir / "spiece.model")
    slow = T5Tokenizer(str(tok_dir / "spiece.model"), extra_ids=100, model_max_length=512, legacy=None)
    slow.save_pretrained(str(tok_dir))
    fast = T5TokenizerFast.from_pretrained(str(tok_dir), from_slow=True)
    fast.save_pretrained(str(tok_dir))
    # flan-t5-xxl's tokenizer_config.json sets no `legacy`: the slow tokenizer runs in legacy mode
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg.pop("legacy", None)
    cfg["model_max_length"] = 512
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return len(slow)


# -- vision tower --------------------------------------------------------------------------------
def write_vision_tower(tower_dir: Path, gen: torch.Generator):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(**VISION)
    model = CLIPVisionModel(cfg)
    randomize(model, gen)
    model.save_pretrained(str(tower_dir), safe_serialization=True)
    processor = {  # openai/clip-vit-large-patch14-336's preprocessor_config.json
        "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": 336,
    }
    (tower_dir / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return model


def fake_hub_cache(cache: Path, repo: str, files_from: Path) -> None:
    """An offline hub cache entry (snapshots/<rev>/..., refs/main) serving ``files_from`` as ``repo``."""
    rev = "0" * 40
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    refs = snap.parents[1] / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(rev)


# -- images ----------------------------------------------------------------------------------
def make_images(out: Path) -> list[str]:
    rng = np.random.default_rng(SEED)
    out.mkdir(parents=True, exist_ok=True)

    def pattern(w, h):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
        return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)

    names = []

    def save(name, image, **kw):
        image.save(out / name, **kw)
        names.append(name)

    save("square.png", Image.fromarray(pattern(64, 64)))
    save("wide.png", Image.fromarray(pattern(150, 60)))
    save("tall.jpg", Image.fromarray(pattern(45, 130)), quality=90)
    save("one_pixel.png", Image.fromarray(np.array([[[200, 30, 90]]], dtype=np.uint8)))
    save("gray_L.png", Image.fromarray(pattern(90, 70)[..., 0], "L"))
    save("palette_P.png", Image.fromarray(pattern(80, 100)).quantize(32))
    rgba = np.concatenate([pattern(100, 70), rng.integers(0, 256, (70, 100, 1), dtype=np.uint8)], -1)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("cmyk.jpg", Image.fromarray(pattern(77, 66)).convert("CMYK"), quality=92)
    deep = (np.linspace(0, 65535, 60 * 50).reshape(50, 60)).astype(np.uint16)
    save("gray16.png", Image.fromarray(deep, "I;16"))
    exif_img = Image.fromarray(pattern(120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display; t2v-metrics does not apply it
    save("exif_rotated.jpg", exif_img, quality=90, exif=exif.tobytes())
    big = Image.fromarray(pattern(1600, 1200)).resize((2400, 1800), Image.BILINEAR)
    save("large.jpg", big, quality=85)
    (out / "not_an_image.png").write_bytes(b"this is not a png")
    names.append("not_an_image.png")
    return names


def build(model_dir: Path, tower_dir: Path, cache: Path, work: Path, gen: torch.Generator, shard: str = "150KB") -> int:
    """Tokenizer, vision tower (also served from the offline hub cache) and the CLIP-FlanT5 checkpoint
    at the sizes of ``VISION`` / ``T5``; returns the tokenizer length."""
    from t2v_metrics.models.vqascore_models.clip_t5.model import CLIPT5Config, CLIPT5ForConditionalGeneration

    tok_dir = model_dir
    n_tokens = write_tokenizer(tok_dir, work)
    vision = write_vision_tower(tower_dir, gen)
    fake_hub_cache(cache, "openai/clip-vit-large-patch14-336", tower_dir)

    # the published config: T5 fields of flan-t5-xxl at tiny sizes + the LLaVA-style mm fields
    config = CLIPT5Config(vocab_size=n_tokens + PADDED_VOCAB_EXTRA, **T5)
    config.architectures = ["CLIPT5ForConditionalGeneration"]
    config.mm_vision_tower = "openai/clip-vit-large-patch14-336"
    config.mm_hidden_size = VISION["hidden_size"]
    config.mm_projector_type = "mlp2x_gelu"
    config.mm_vision_select_layer = -2
    config.mm_vision_select_feature = "patch"
    config.use_mm_proj = True
    config.image_aspect_ratio = "pad"
    config.tune_mm_mlp_adapter = False
    config.freeze_mm_mlp_adapter = False
    config.use_cache = True
    model = CLIPT5ForConditionalGeneration(config)  # builds the tower from the (fake) hub id
    randomize(model, gen)
    with torch.no_grad():  # the tower as saved in the checkpoint = the hub tower (frozen in training)
        model.vision_tower.vision_tower.load_state_dict(vision.state_dict())
    aim_answer_rows(model, config, tok_dir, gen)
    # published as bfloat16 pytorch_model*.bin (the top-level `embed_tokens` alias of `shared` rules out safetensors)
    model.to(torch.bfloat16).save_pretrained(str(model_dir), safe_serialization=False, max_shard_size=shard)

    return n_tokens


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vqascore-gen-"))
    cache = work / "hub"  # offline hub cache serving the tiny vision tower under its published id
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(cache)
    import transformers

    root, clip_t5_model, Score, CLIPT5Config, CLIPT5ForConditionalGeneration = import_official()
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model_dir, tower_dir = HERE / "clip-flant5", HERE / "clip-vit-large-patch14-336"
    tok_dir = model_dir
    for d in (model_dir, tower_dir, HERE / "images", HERE / "flan-t5-tokenizer"):
        shutil.rmtree(d, ignore_errors=True)
    try:
        n_tokens = build(model_dir, tower_dir, cache, work, gen)

        names = make_images(HERE / "images")

        # the official scorer: t2v_metrics.vqascore.VQAScore is Score + CLIPT5Model for this name
        table = clip_t5_model.CLIP_T5_MODELS["clip-flant5-xxl"]
        table["model"]["path"] = str(model_dir)
        table["tokenizer"]["path"] = str(tok_dir)
        original_loader = clip_t5_model.load_pretrained_model

        def loader_float32(*args, **kwargs):
            tokenizer, model, processor = original_loader(*args, **kwargs)
            return tokenizer, model.float(), processor  # bfloat16 -> float32, exact (weights bf16-representable)

        clip_t5_model.load_pretrained_model = loader_float32

        class VQAScore(Score):  # t2v_metrics/vqascore.py, restricted to the CLIP-T5 table
            def prepare_scoremodel(self, model="clip-flant5-xxl", device="cuda", cache_dir=None, **kwargs):
                return clip_t5_model.CLIPT5Model(model, device=device, cache_dir=cache_dir or str(cache), **kwargs)

            def list_all_models(self):
                return list(clip_t5_model.CLIP_T5_MODELS)

        scorer = VQAScore(model="clip-flant5-xxl", device="cpu", cache_dir=str(cache))
        tok = scorer.model.tokenizer
        cases = []
        long_images = names[:2]  # the 2048-id prompt is costly: scored with two images only
        for name in names:
            path = str(HERE / "images" / name)
            prompts = PROMPTS if name in long_images else PROMPTS[:-1]
            try:
                scores = scorer(images=[path], texts=prompts)[0].tolist()
                error = None
            except Exception as exc:  # recorded: the official code cannot score it
                scores, error = [None] * len(prompts), f"{type(exc).__name__}: {exc}"
            for k, (prompt, s) in enumerate(zip(prompts, scores)):
                case = {"image": f"images/{name}", "prompt_index": k, "prompt": prompt, "score": s}
                if error:
                    case["official_error"] = error
                cases.append(case)
        # encoder token ids of each prompt as the official code builds them (image token = -200)
        fmt = clip_t5_model.format_question
        ids = [clip_t5_model.t5_tokenizer_image_token(fmt(QUESTION.format(p), "t5_chat"), tok) for p in PROMPTS]
        answer_ids = clip_t5_model.t5_tokenizer_image_token("Yes", tok)
        # a second call with all prompts in one batch per image is what Score does; also one prompt at a time:
        single = scorer.model.forward([str(HERE / "images" / names[0])], [PROMPTS[0]]).tolist()[0]
        assert abs(single - cases[0]["score"]) < 1e-6, (single, cases[0]["score"])
        with open(HERE / "cases.jsonl", "w") as fh:
            for c in cases:
                fh.write(json.dumps(c, ensure_ascii=False) + "\n")
        # what the official default (bfloat16 on this CPU) does
        clip_t5_model.load_pretrained_model = original_loader
        try:
            bf = VQAScore(model="clip-flant5-xxl", device="cpu", cache_dir=str(cache))
            bf(images=[str(HERE / "images" / names[0])], texts=PROMPTS[:1])
            bf16_outcome = "ran"
        except Exception as exc:
            bf16_outcome = f"{type(exc).__name__}: {exc}"
        import sentencepiece
        import t2v_metrics  # noqa: F401  (our stub; version from the dist metadata)
        from importlib.metadata import version

        meta = {
            "seed": SEED, "vision": VISION, "t5": T5, "vocab_size": n_tokens + PADDED_VOCAB_EXTRA,
            "tokenizer_len": n_tokens, "question_template": QUESTION, "answer": "Yes",
            "prompt_token_ids": ids, "answer_token_ids": answer_ids,
            "official_bfloat16_on_cpu": bf16_outcome,
            "versions": {"t2v-metrics": version("t2v-metrics"), "torch": torch.__version__,
                         "transformers": transformers.__version__, "numpy": np.__version__,
                         "Pillow": version("Pillow"), "sentencepiece": sentencepiece.__version__,
                         "tokenizers": version("tokenizers")},
            "t2v_metrics_sources_md5": {p: hashlib.md5((root / p).read_bytes()).hexdigest() for p in (
                "score.py", "models/vqascore_models/clip_t5_model.py", "models/vqascore_models/mm_utils.py",
                "models/vqascore_models/clip_t5/model/language_model/clip_t5.py",
                "models/vqascore_models/clip_t5/model/multimodal_encoder/clip_encoder.py",
                "models/vqascore_models/clip_t5/model/multimodal_projector/builder.py")},
        }
        (HERE / "set.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        print(json.dumps({c["image"] + f"#{c['prompt_index']}": c["score"] for c in cases}, indent=0)[:3000])
        print("bfloat16 on CPU:", bf16_outcome)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aim_answer_rows(model, config, tok_dir: Path, gen: torch.Generator) -> None:
    """Point the lm_head rows of '▁Yes' and '</s>' at the decoder's typical states (plus noise), so
    that the scores spread over (0, 1) instead of sitting near 1/vocab; still seeded and random."""
    from transformers import T5Tokenizer

    tok = T5Tokenizer.from_pretrained(str(tok_dir))
    yes = tok("Yes").input_ids  # [▁Yes, </s>]
    model.eval()
    with torch.no_grad():
        feats = torch.randn(4, 20, config.d_model, generator=gen)
        out = model.decoder(input_ids=torch.tensor([[0, yes[0]]] * 4), encoder_hidden_states=model.encoder(
            inputs_embeds=feats).last_hidden_state)
        h = out.last_hidden_state  # after the decoder's final RMS norm
        for pos, token in enumerate(yes):
            direction = h[:, pos].mean(0)
            row = 4.0 * direction / direction.norm() ** 2 + 0.3 * torch.randn(config.d_model, generator=gen) / math.sqrt(config.d_model)
            model.lm_head.weight[token] = bf16_exact(row)


if __name__ == "__main__":
    main()
