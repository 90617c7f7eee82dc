"""Ground truth for prefscore's `hpsv3` metric, produced by the official package (hpsv3 1.0.0).

Run with the official virtualenv (see make_venv.sh / run.sh):

    /work/venvs/hpsv3/bin/python tests/data/hpsv3/generate.py

What it does (everything seeded):

1. Builds a small byte-level BPE tokenizer in the Qwen2 format (tokenizer.json with Qwen2's NFC normaliser,
   split regex and ByteLevel pre-tokeniser; the 14 Qwen2-VL special tokens <|endoftext|> ... <|video_pad|> as
   added tokens right after the BPE vocabulary, in Qwen's order), the Qwen2-VL-7B-Instruct chat template, and
   its real `preprocessor_config.json` values (min/max pixels 3136 / 12845056, patch 14, temporal patch 2,
   merge 2, OpenAI CLIP mean/std, bicubic).
2. Builds a tiny Qwen2-VL (`Qwen2VLForConditionalGeneration`, transformers 4.45.2) whose config has the real
   layout at tiny sizes (text hidden 64, 2 layers, 4 heads / 2 KV heads, M-RoPE sections [2, 3, 3]; vision
   depth 2, width 32, patch 14, merge 2) and a config vocabulary larger than the tokenizer (as the real
   152064 > 151657), saved as the base model the official code loads with `from_pretrained`.
3. Builds the official reward model exactly as `HPSv3RewardInferencer` does (`create_model_and_processor`
   with `hpsv3/config/HPSv3_7B.yaml`, only `model_name_or_path` pointed at the tiny base and float32
   instead of bf16 so that it runs on a CPU): `<|Reward|>` added, embeddings resized to the tokenizer,
   the `ranknet` head `Linear(H,1024)-ReLU-Dropout-Linear(1024,16)-ReLU-Linear(16,2)`. Every parameter is
   then redrawn from a seeded generator (norm weights around 1, non-zero biases, fan-in scaled weights) and
   the state dict is saved as `model/HPSv3.safetensors` (the published file name and key layout).
4. Runs `HPSv3RewardInferencer(config_path, checkpoint_path=model/HPSv3.safetensors, device="cpu")` and its
   `reward(image_paths, prompts)` per case, and once on a mixed batch, recording logits[:, 0] (mu) and
   logits[:, 1] (log sigma).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
IMAGES = HERE / "images"
SEED = 20250715

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
PREPROCESSOR = {  # Qwen/Qwen2-VL-7B-Instruct preprocessor_config.json
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

CORPUS = [
    "a red fox in the snow, digital art", "a photo of a cat sitting on a wooden table",
    "cute chibi anime cartoon fox, smiling wagging tail with a small cartoon heart above sticker",
    "Please provide the overall ratings of this image:", "You are a helpful assistant.",
    "一只在雪地里的红狐狸，油画风格", "café naïve résumé — déjà vu; Ελληνικά; русский текст", "emoji 🦊🌨️✨",
    "The quick brown fox jumps over the lazy dog 0123456789 {braces} [brackets] (parens) <angles>",
]

PROMPT = "a red fox in the snow, digital art"
LONG_PROMPT = ("an extremely detailed, ultra realistic photograph of an old lighthouse on a rocky cliff at sunset, "
               "waves crashing below, seagulls circling, warm golden light, volumetric fog, 35mm film grain, "
               "shot on a Hasselblad, award winning composition, trending on artstation, " * 6).strip()
PROMPTS = {
    "long": LONG_PROMPT,
    "unicode": "一只在雪地里的红狐狸 🦊 — café naïve, Ελληνικά",
    "empty": "",
    "braces_newlines": "{text_prompt} {0} %s\n\tline two\r\nend  ",
    "cat": "a photo of a cat sitting on a wooden table",
}


def corpus_lines() -> list[str]:
    from hpsv3.dataset.data_collator_qwen import INSTRUCTION, prompt_with_special_token

    text = INSTRUCTION + prompt_with_special_token
    return CORPUS + text.split("\n") + [LONG_PROMPT]


def build_tokenizer(out: Path) -> int:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus_lines() * 4, trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as in the Qwen repo
    decoder = {str(base + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "added_tokens_decoder": decoder, "additional_special_tokens": SPECIALS[1:],
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return base + len(SPECIALS)


def tiny_config(n_tokens: int) -> dict:
    base = n_tokens - len(SPECIALS)
    ids = {s: base + i for i, s in enumerate(SPECIALS)}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 32768, "max_window_layers": 2, "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {"depth": 2, "embed_dim": 32, "mlp_ratio": 4, "num_heads": 2, "in_chans": 3, "hidden_size": 64,
                          "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": n_tokens + 7,  # padded beyond the tokenizer, as the real 152064 > 151657
    }


def redraw(model: torch.nn.Module, seed: int) -> None:
    """Seeded non-trivial values for every parameter: norms around 1, biases != 0, fan-in scaled weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if p.dim() == 1 and ("norm" in name or "ln_q" in name) and name.endswith("weight"):
                v = 1.0 + 0.25 * torch.randn(shape, generator=g)
            elif p.dim() == 1:
                v = 0.2 * torch.randn(shape, generator=g)
            elif "embed_tokens" in name or "lm_head" in name:
                v = torch.randn(shape, generator=g)
            else:
                fan_in = int(np.prod(shape[1:]))
                v = torch.randn(shape, generator=g) * (1.5 / math.sqrt(fan_in))
            p.copy_(v.to(p.dtype))


def make_images(root: Path) -> dict[str, str]:
    """Images that stress preprocessing; returns name -> note."""
    rng = np.random.default_rng(SEED)
    root.mkdir(parents=True, exist_ok=True)

    def pattern(h, w, c=3):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)[..., :c]
        return np.clip(base + rng.integers(-40, 40, (h, w, c)), 0, 255).astype(np.uint8)

    notes = {}
    Image.fromarray(pattern(120, 300)).save(root / "wide.png"); notes["wide.png"] = "RGB 300x120 (wider than tall)"
    Image.fromarray(pattern(250, 90)).save(root / "tall.jpg", quality=90); notes["tall.jpg"] = "RGB JPEG 90x250"
    Image.fromarray(pattern(448, 448)).save(root / "square448.png"); notes["square448.png"] = "RGB 448x448: exactly 256*28*28 px"
    Image.fromarray(pattern(1, 1)).save(root / "one.png"); notes["one.png"] = "RGB 1x1 (upscaled to 448x448)"
    Image.fromarray(pattern(3, 2)[..., 0], "L").save(root / "tiny_l.png"); notes["tiny_l.png"] = "L 2x3"
    Image.fromarray(pattern(64, 80)[..., 1], "L").save(root / "gray.png"); notes["gray.png"] = "L 80x64"
    pal = Image.fromarray(pattern(60, 80)).quantize(colors=16)
    pal.info["transparency"] = 3
    pal.save(root / "palette.png", transparency=3); notes["palette.png"] = "P 80x60, 16 colours, index 3 transparent"
    rgba = pattern(70, 100, 3)
    alpha = (np.mgrid[0:70, 0:100][1] * 255 // 99).astype(np.uint8)
    Image.fromarray(np.dstack([rgba, alpha]), "RGBA").save(root / "rgba.png"); notes["rgba.png"] = "RGBA 100x70, alpha ramp"
    Image.fromarray(pattern(48, 64)).convert("CMYK").save(root / "cmyk.jpg", quality=92); notes["cmyk.jpg"] = "CMYK JPEG 64x48"
    y, x = np.mgrid[0:40, 0:50]
    Image.fromarray((x * 1300 + y * 50).astype(np.uint16)).save(root / "gray16.png")
    notes["gray16.png"] = "16-bit grey PNG 50x40 (opens as I;16, values up to 65650 clipped by Pillow)"
    exif = Image.Exif(); exif[0x0112] = 6
    Image.fromarray(pattern(80, 120)).save(root / "exif_rot.jpg", exif=exif, quality=90)
    notes["exif_rot.jpg"] = "RGB JPEG 120x80 with EXIF orientation 6 (not applied by the official code)"
    yy, xx = np.mgrid[0:1200, 0:1600]
    big = np.stack([(np.sin(xx / 37.0) * 100 + 128), (np.cos(yy / 23.0) * 100 + 128), ((xx + yy) % 256)], -1)
    Image.fromarray(big.astype(np.uint8)).save(root / "large.jpg", quality=75); notes["large.jpg"] = "RGB JPEG 1600x1200 (downscaled)"
    Image.fromarray(pattern(300, 1)).save(root / "sliver.png"); notes["sliver.png"] = "RGB 1x300: aspect ratio 300 > 200"
    Image.fromarray(pattern(336, 560)).save(root / "grid560x336.png"); notes["grid560x336.png"] = "RGB 560x336 (already multiples of 28)"
    return notes


def main() -> None:
    import hpsv3
    import transformers
    from hpsv3.inference import HPSv3RewardInferencer
    from hpsv3.train import create_model_and_processor
    from hpsv3.utils.parser import DataConfig, ModelConfig, PEFTLoraConfig, TrainingConfig, parse_args_with_yaml
    from omegaconf import OmegaConf
    import safetensors.torch

    torch.manual_seed(SEED)
    work = Path(tempfile.mkdtemp(prefix="hpsv3-base-"))
    if MODEL.exists():
        shutil.rmtree(MODEL)
    MODEL.mkdir(parents=True)
    n_tokens = build_tokenizer(work)
    cfg = tiny_config(n_tokens)
    (work / "config.json").write_text(json.dumps(cfg, indent=2))
    base = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(**cfg))
    base.save_pretrained(str(work))  # the "Qwen/Qwen2-VL-7B-Instruct" the official code starts from
    (work / "config.json").write_text(json.dumps(cfg, indent=2))  # keep the hub-style config.json

    official_yaml = Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml"
    conf = OmegaConf.to_container(OmegaConf.load(official_yaml))
    conf.update(model_name_or_path=str(work), bf16=False, torch_dtype="float32", output_dir=str(work / "out"),
                report_to="none")
    yaml_path = work / "HPSv3_tiny.yaml"
    OmegaConf.save(OmegaConf.create(conf), yaml_path)

    (data_config, training_args, model_config, peft_config), _ = parse_args_with_yaml(
        (DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig), str(yaml_path), is_train=False)
    model, processor, _ = create_model_and_processor(model_config, peft_config, training_args)
    redraw(model, SEED + 1)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(MODEL / "HPSv3.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                 "merges.txt", "chat_template.json"):
        shutil.copy(work / name, MODEL / name)
    del model

    notes = make_images(IMAGES)
    inferencer = HPSv3RewardInferencer(config_path=str(yaml_path), checkpoint_path=str(MODEL / "HPSv3.safetensors"),
                                       device="cpu")
    reward_id = inferencer.processor.tokenizer.convert_tokens_to_ids("<|Reward|>")

    def run(images: list[str], prompts: list[str]):
        with torch.no_grad():
            return inferencer.reward([str(IMAGES / i) for i in images], prompts).double().numpy()

    cases = []
    todo = [(img, "prompt", PROMPT) for img in sorted(notes)]
    todo += [("wide.png", key, text) for key, text in PROMPTS.items()]
    todo += [("rgba.png", "cat", PROMPTS["cat"]), ("large.jpg", "unicode", PROMPTS["unicode"])]
    for img, key, text in todo:
        case = {"id": f"{img}|{key}", "image": img, "prompt": text, "note": notes[img]}
        try:
            out = run([img], [text])
            case.update(mu=float(out[0, 0]), log_sigma=float(out[0, 1]), sigma=float(math.exp(out[0, 1])))
        except Exception as exc:  # recorded: the official code cannot score this image
            case.update(error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
            # what the same code computes with its aspect-ratio guard lifted (prefscore scores such images)
            import hpsv3.dataset.utils as hutils
            import transformers.models.qwen2_vl.image_processing_qwen2_vl as qip
            saved = hutils.MAX_RATIO, qip.smart_resize
            hutils.MAX_RATIO = float("inf")
            qip.smart_resize = lambda h, w, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280: \
                hutils.smart_resize(h, w, factor, min_pixels, max_pixels)
            try:
                out = run([img], [text])
                case.update(unguarded_mu=float(out[0, 0]), unguarded_sigma=float(math.exp(out[0, 1])))
            finally:
                hutils.MAX_RATIO, qip.smart_resize = saved
        cases.append(case)
        print(case["id"], case.get("mu"), case.get("sigma"), case.get("error", ""), flush=True)

    # one mixed batch (different image grids and prompt lengths, right padding) through the official batching
    batch_imgs = ["wide.png", "tall.jpg", "one.png", "palette.png", "large.jpg"]
    batch_prompts = [PROMPT, PROMPTS["long"], PROMPTS["empty"], PROMPTS["unicode"], PROMPTS["cat"]]
    out = run(batch_imgs, batch_prompts)
    batch = [{"image": i, "prompt": p, "mu": float(o[0]), "log_sigma": float(o[1]), "sigma": float(math.exp(o[1]))}
             for i, p, o in zip(batch_imgs, batch_prompts, out)]

    with open(HERE / "cases.jsonl", "w") as fh:
        for case in cases:
            fh.write(json.dumps(case, ensure_ascii=False) + "\n")
    (HERE / "batch.json").write_text(json.dumps(batch, ensure_ascii=False, indent=1))
    import PIL
    import tokenizers
    (HERE / "set.json").write_text(json.dumps({
        "seed": SEED, "hpsv3": "1.0.0", "transformers": transformers.__version__, "torch": torch.__version__,
        "tokenizers": tokenizers.__version__, "pillow": PIL.__version__, "python": sys.version.split()[0],
        "tokenizer_size_with_reward": len(inferencer.processor.tokenizer), "reward_token_id": reward_id,
        "config": cfg, "official_yaml_changes": {"model_name_or_path": "<tiny base>", "bf16": False,
                                                 "torch_dtype": "float32", "report_to": "none"},
        "device": "cpu", "dtype": "float32", "cases": len(cases), "batch_cases": len(batch),
    }, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
