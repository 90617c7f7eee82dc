"""Ground truth for `vqascore` (LLaVA-OneVision): t2v-metrics 3.0's own scorer on a tiny seeded model.

Run by generate.sh inside its own virtualenv (t2v-metrics==3.0 --no-deps, transformers 4.49.0,
numpy 1.26.4, Pillow 10.0.0, accelerate, torch 2.13.0 CPU) with the original ``llava`` package of
GitHub LLaVA-VL/LLaVA-NeXT on ``PYTHONPATH`` (``$LLAVA_NEXT_SRC``; its commit is recorded in set.json).
Writes, next to this file:

* ``llava-onevision-qwen2-7b-ov/``: the ``lmms-lab/llava-onevision-qwen2-7b-ov`` layout at tiny
  sizes, saved by the official ``LlavaQwenForCausalLM.save_pretrained`` (float16-exact float32
  safetensors shards + index), ``config.json`` with ``model_type: llava`` and the published
  ``mm_*`` / anyres fields, and Qwen2-format tokenizer files (byte-level BPE trained here);
* ``siglip-so400m-patch14-384/``: the vision tower repository (``config.json``, ``model.safetensors``);
* ``cases.jsonl`` (image, prompt, score or official error), ``set.json``.

See README.md for the one change made to the computation (float32 instead of float16).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parent / "vqascore" / "images"
SEED = 20251205
TOWER_ID = "google/siglip-so400m-patch14-384"

SIGLIP = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=384,
              patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, num_channels=3)
QWEN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=False,
            use_sliding_window=False, sliding_window=131072, max_window_layers=28, hidden_act="silu")
PINPOINTS = [[384, 384], [384, 768], [768, 384], [768, 768], [384, 1152], [1152, 384]]
MAX_LEN = 1536  # tokenizer_model_max_length (32768 in the published config): the long prompt is cut
PADDED_VOCAB_EXTRA = 16  # like 152064 embeddings vs 151646 tokenizer ids

PROMPTS = [
    "a red fox in the snow",
    "",
    "Two dogs and a cat sitting on a bench, photographed at sunset with a wide-angle lens.",
    "café naïve – “quoted” 東京 🦊 Ünïcödé\tTABS   and  spaces\nnew line",
    " ".join(["a very long prompt about a city street with many cars people trees and buildings"] * 40),
    "a cat <image> here",  # the official code inserts the image features again there
]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


def randomize(module: torch.nn.Module, gen: torch.Generator, skip: str | None = None) -> None:
    """Seeded weights: norms 1 + N(0, 0.2), biases N(0, 0.1), matrices N(0, 1/fan_in), embeddings N(0, 0.5²)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if skip and name.startswith(skip):
                continue
            if p.dim() == 1:
                base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                value = base + (0.2 if base else 0.1) * torch.randn(p.shape, generator=gen)
                if name.endswith("image_newline"):
                    value = torch.randn(p.shape, generator=gen) * 0.5
            else:
                fan_in = p.shape[-1] if p.dim() == 2 else int(np.prod(p.shape[1:]))
                value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
                if "embed" in name:
                    value = torch.randn(p.shape, generator=gen) * 0.5
            p.copy_(fp16_exact(value))


def write_tokenizer(out: Path) -> int:
    """A byte-level BPE tokenizer in Qwen2's format (NFC, Qwen2's split regex, ByteLevel, no BOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    words = ("a the of and in on with at to is are this that image show does answer question yes no Yes No "
             "system user assistant You helpful red fox snow dog dogs cat bench sunset wide angle lens "
             "photographed two sitting very long prompt about city street many cars people trees buildings "
             "blue green sky water café naïve quoted new line tabs spaces Does Answer Two").split()
    rng = np.random.default_rng(SEED)
    lines = [" ".join(rng.choice(words, size=12)) for _ in range(400)]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(SPECIALS)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json, merges.txt
    n = tok.get_vocab_size(with_added_tokens=True)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True} for s in SPECIALS},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None, "chat_template": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>"}, indent=2))
    (out / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    return n


def fake_hub_cache(cache: Path, repo: str, files_from: Path) -> None:
    rev = "0" * 40
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    (snap.parents[1] / "refs").mkdir(exist_ok=True)
    (snap.parents[1] / "refs" / "main").write_text(rev)


def import_official():
    """t2v-metrics' LLaVA-OneVision scorer without the package __init__ files (they import every model
    family); ``decord`` (video only) is an empty stand-in. The modules used are imported unchanged."""
    import importlib.machinery
    import importlib.util

    root = Path(importlib.util.find_spec("t2v_metrics").submodule_search_locations[0])
    for name, sub in [("t2v_metrics", ""), ("t2v_metrics.models", "models"),
                      ("t2v_metrics.models.vqascore_models", "models/vqascore_models")]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / sub)]
        sys.modules[name] = mod
    decord = types.ModuleType("decord")
    decord.__spec__ = importlib.machinery.ModuleSpec("decord", None)
    decord.VideoReader = decord.cpu = None
    sys.modules["decord"] = decord
    from t2v_metrics.models.vqascore_models import llavaov_model

    return root, llavaov_model


class Float32Torch(types.ModuleType):
    """``torch`` as llavaov_model sees it, except that ``torch.float16`` (its image-tensor cast) is float32."""

    def __getattr__(self, name):
        return torch.float32 if name == "float16" else getattr(torch, name)


def build(model_dir: Path, tower_dir: Path, cache: Path, gen: torch.Generator) -> int:
    from llava.model.language_model.llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
    from llava.model.multimodal_encoder.siglip_encoder import SigLipVisionConfig, SigLipVisionModel

    n_tokens = write_tokenizer(model_dir)
    tower = SigLipVisionModel(SigLipVisionConfig(**SIGLIP))
    randomize(tower, gen)
    tower_dir.mkdir(parents=True, exist_ok=True)
    tower.save_pretrained(str(tower_dir), safe_serialization=True)
    fake_hub_cache(cache, TOWER_ID, tower_dir)

    tok = json.loads((model_dir / "added_tokens.json").read_text())
    config = LlavaQwenConfig(
        **QWEN, vocab_size=n_tokens + PADDED_VOCAB_EXTRA, bos_token_id=tok["<|endoftext|>"],
        eos_token_id=tok["<|im_end|>"], attention_dropout=0.0, initializer_range=0.02, rope_scaling=None,
        use_cache=True, torch_dtype="bfloat16",
        image_aspect_ratio="anyres_max_9", image_crop_resolution=None, image_grid_pinpoints=PINPOINTS,
        image_split_resolution=None, mm_hidden_size=SIGLIP["hidden_size"], mm_newline_position="one_token",
        mm_patch_merge_type="spatial_unpad", mm_projector_lr=None, mm_projector_type="mlp2x_gelu",
        mm_resampler_type=None, mm_spatial_pool_mode="bilinear",
        mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model", mm_use_im_patch_token=False,
        mm_use_im_start_end=False, mm_vision_select_feature="patch", mm_vision_select_layer=-2,
        mm_vision_tower=TOWER_ID, mm_vision_tower_lr=2e-06, pos_skipping_range=4096,
        tokenizer_model_max_length=MAX_LEN, tokenizer_padding_side="right", use_mm_proj=True,
        use_pos_skipping=False, vision_tower_pretrained=None, image_token_index=n_tokens)
    config.architectures = ["LlavaQwenForCausalLM"]
    model = LlavaQwenForCausalLM(config)  # loads the (tiny) tower from the offline hub, last layer dropped
    randomize(model, gen, skip="model.vision_tower.")
    with torch.no_grad():  # aim lm_head's "Yes" row at the final state so scores are not ~1/vocab
        from tokenizers import Tokenizer

        yes = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("Yes").ids[0]
        model.lm_head.weight[yes] = fp16_exact(model.lm_head.weight[yes] * 4.0)
    model.save_pretrained(str(model_dir), safe_serialization=True, max_shard_size="150KB")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["model_type"] = "llava"  # as published (the class saves "llava_qwen")
    cfg["_name_or_path"] = "lmms-lab/llava-onevision-qwen2-7b-ov"
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return n_tokens


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="vqa-llava-ov-"))
    cache = work / "hub"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(cache)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model_dir, tower_dir = HERE / "llava-onevision-qwen2-7b-ov", HERE / "siglip-so400m-patch14-384"
    for d in (model_dir, tower_dir):
        shutil.rmtree(d, ignore_errors=True)
    root, llavaov_model = import_official()
    n_tokens = build(model_dir, tower_dir, cache, gen)

    for name in llavaov_model.LLAVA_OV_MODELS:
        llavaov_model.LLAVA_OV_MODELS[name]["model"]["path"] = str(model_dir)
        llavaov_model.LLAVA_OV_MODELS[name]["tokenizer"]["path"] = str(model_dir)
    fp16_error = None
    scorer = llavaov_model.LLaVAOneVisionModel("llava-onevision-qwen2-7b-ov", device="cpu")
    try:  # the official float16 path, for the record
        scorer.forward([str(IMAGES / "square.png")], [PROMPTS[0]])
    except Exception as exc:  # noqa: BLE001
        fp16_error = f"{type(exc).__name__}: {exc}"
    scorer.model.float()  # float16-exact weights: lossless
    llavaov_model.torch = Float32Torch("torch")

    images = sorted(p.name for p in IMAGES.iterdir())
    rows = []
    for image in images:
        for k, prompt in enumerate(PROMPTS):
            if k >= 4 and image not in ("square.png", "large.jpg"):
                continue
            row = {"image": f"../vqascore/images/{image}", "prompt_index": k, "prompt": prompt}
            try:
                row["score"] = float(scorer.forward([str(IMAGES / image)], [prompt])[0])
            except Exception as exc:  # noqa: BLE001
                row["score"] = None
                row["official_error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(row["image"], k, row.get("score"), row.get("official_error", ""), flush=True)
    with open(HERE / "cases.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    from llava.mm_utils import tokenizer_image_token
    prompt_ids = [tokenizer_image_token(scorer.format_question(
        'Does this image show "{}"? Answer the question with Yes or No'.format(p)), scorer.tokenizer, -200)
        for p in PROMPTS]
    import llava, transformers, PIL
    llava_src = Path(llava.__file__).resolve().parents[1]
    commit = (llava_src / "COMMIT").read_text().strip() if (llava_src / "COMMIT").is_file() else None
    out = {
        "seed": SEED, "siglip": SIGLIP, "qwen": QWEN, "pinpoints": PINPOINTS, "tokenizer_model_max_length": MAX_LEN,
        "tokenizer_ids": n_tokens, "vocab_size": n_tokens + PADDED_VOCAB_EXTRA,
        "answer_id": scorer.tokenizer.encode("Yes")[0], "prompt_token_ids": prompt_ids,
        "official_float16_on_cpu": fp16_error,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__, "Pillow": PIL.__version__,
                     "llava_next_commit": commit},
        "md5": {str(p.relative_to(root)): md5(p) for p in [root / "models/vqascore_models/llavaov_model.py"]}
               | {f"llava/{p}": md5(llava_src / "llava" / p) for p in
                  ["model/llava_arch.py", "mm_utils.py", "model/builder.py", "model/language_model/llava_qwen.py",
                   "model/multimodal_encoder/siglip_encoder.py", "conversation.py"]},
    }
    (HERE / "set.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
