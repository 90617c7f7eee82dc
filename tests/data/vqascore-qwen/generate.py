"""Ground truth for `vqascore` on Qwen2-VL / Qwen2.5-VL: t2v-metrics 3.0's own scoring code on tiny seeded models.

Run by generate.sh inside its own virtualenv (make_venv.sh: t2v-metrics==3.0 --no-deps, transformers 4.49.0,
numpy 1.26.4, Pillow 10.0.0, qwen-vl-utils 0.0.11, accelerate 1.10.1, torch 2.14.1 CPU + torchvision 0.29.1).
Writes, next to this file:

* ``qwen2-vl/``: the ``Qwen/Qwen2-VL-2B-Instruct`` layout at tiny sizes (tied ``lm_head``, as the 2B);
* ``qwen2.5-vl/``: the ``Qwen/Qwen2.5-VL-7B-Instruct`` layout at tiny sizes (untied ``lm_head``, window attention);
  each with ``config.json`` (4.4x flat format, ``vision_config``), ``generation_config.json`` (the published
  values: ``repetition_penalty`` 1.05, ``top_k`` 1, ``top_p`` 0.001, ``do_sample`` true), ``model.safetensors``
  (``model.*``, ``visual.*``, ``lm_head.*``), ``preprocessor_config.json`` (the published values),
  ``chat_template.json`` (the published template) and a small byte-level BPE tokenizer in the Qwen2 format
  (``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``);
* ``cases.jsonl`` (model, image, prompt, score), ``set.json``.

Images are tests/data/vqascore/images (shared with the CLIP-FlanT5 fixture).

The official scorer is ``t2v_metrics.VQAScore(model=...)`` = ``Score`` + ``Qwen2VLModel``; the package
``__init__`` files import every model family and are replaced by empty namespace modules (the modules used are
imported unchanged, md5 sums in set.json); ``decord`` (imported by qwen2vl_model.py for videos only) is an empty
stub module. Changes to run on a CPU, none of which changes the computation: in the ``QWEN2_VL_MODELS`` table the
model and tokenizer paths point at the tiny folders, ``torch_dtype`` is float32 (the published bfloat16 would
round the computation) and ``attn_implementation`` is ``sdpa`` (``flash_attention_2`` needs the flash-attn
package and CUDA).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parent / "vqascore" / "images"
SEED = 20251205

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
SPECIALS_QWEN2 = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
SPECIALS_QWEN25 = SPECIALS_QWEN2 + ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
                                    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
CHAT_TEMPLATE = (  # chat_template.json of Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct
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


def preprocessor(processor_class: str) -> dict:
    """preprocessor_config.json of the published Qwen2-VL / Qwen2.5-VL Instruct repositories."""
    return {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class}


def generation_config(ids: dict) -> dict:
    """generation_config.json as published with the Instruct models (only repetition_penalty acts when the
    caller passes do_sample=False; the sampling values are the published ones)."""
    return {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "repetition_penalty": 1.05,
            "temperature": 0.01, "top_k": 1, "top_p": 0.001, "transformers_version": "4.37.0"}


FAMILIES = {
    "qwen2-vl": dict(model_name="qwen2-vl-2b", specials=SPECIALS_QWEN2, processor_class="Qwen2VLProcessor",
                     seed_offset=0),
    "qwen2.5-vl": dict(model_name="qwen2.5-vl-7b", specials=SPECIALS_QWEN25, processor_class="Qwen2_5_VLProcessor",
                       seed_offset=1),
}

CORPUS = [
    'Does this image show "a red fox in the snow"?', "Yes", "Yes", "No", "You are a helpful assistant.",
    "Two dogs and a cat sitting on a bench, photographed at sunset with a wide-angle lens.",
    "café naïve – “quoted” 東京 🦊 Ünïcödé", "a photo of a cat sitting on a wooden table",
    "The quick brown fox jumps over the lazy dog 0123456789 (parens) [brackets]", "Yes, it does. Yes!",
]
PROMPTS = [
    "a red fox in the snow",
    "",
    "café naïve – “quoted” 東京 🦊 Ünïcödé\tTABS   and  spaces\nnew line",
    # the answer token itself in the question: the repetition penalty lowers its logit
    "Yes\nYes, a dog saying Yes",
    " ".join(["a very long prompt about a city street with many cars people trees and buildings"] * 12),
]
LARGE = "large.jpg"  # 2400x1800: about 5500 visual tokens per call; scored with the first prompt only


def tiny_config(family: str, specials: list[str], base: int) -> dict:
    ids = {s: base + i for i, s in enumerate(specials)}
    n_tokens = base + len(specials)
    common = {
        "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_window_layers": 2, "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": n_tokens + 41,  # padded beyond the tokenizer, as the real 151936 / 152064 > 151665
    }
    if family == "qwen2-vl":  # Qwen2-VL-2B-Instruct: tied lm_head
        return {"architectures": ["Qwen2VLForConditionalGeneration"], **common, "model_type": "qwen2_vl",
                "max_position_embeddings": 32768, "tie_word_embeddings": True,
                "vision_config": {"depth": 2, "embed_dim": 32, "mlp_ratio": 4, "num_heads": 2, "in_chans": 3,
                                  "hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
                                  "spatial_patch_size": 14, "temporal_patch_size": 2}}
    return {"architectures": ["Qwen2_5_VLForConditionalGeneration"], **common, "model_type": "qwen2_5_vl",
            "max_position_embeddings": 128000, "tie_word_embeddings": False,
            "vision_config": {"depth": 4, "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 48,
                              "num_heads": 2, "in_chans": 3, "out_hidden_size": 64, "patch_size": 14,
                              "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                              "fullatt_block_indexes": [1, 3], "tokens_per_second": 2, "temporal_patch_size": 2}}


def build_tokenizer(out: Path, specials: list[str]) -> int:
    """Byte-level BPE in the Qwen2 format; returns the size of the BPE vocabulary (the first special's id)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator((CORPUS + PROMPTS[:4]) * 4, trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt, as in the Qwen repositories
    decoder = {str(base + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True} for i, s in enumerate(specials)}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                                      "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
                                      "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                      "<|video_pad|>"],
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}, indent=2) + "\n")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    return base


def redraw(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded non-trivial values: norm weights 1 + N(0, 0.25), biases N(0, 0.2), weights N(0, (1.5/sqrt(fan_in))^2),
    embeddings and lm_head N(0, 1/hidden)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_q" in name) and name.endswith("weight"):
                v = 1.0 + 0.25 * torch.randn(p.shape, generator=gen)
            elif p.dim() == 1:
                v = 0.2 * torch.randn(p.shape, generator=gen)
            elif "embed_tokens" in name or "lm_head" in name:  # logits of about unit spread
                v = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1])
            else:
                v = torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(int(np.prod(p.shape[1:]))))
            p.copy_(v)


def aim_yes(model, processor, yes_id: int, gen: torch.Generator) -> None:
    """Point the lm_head row of the answer token at the typical final hidden state (plus noise), so that the scores
    spread over (0, 1) instead of sitting near 1/vocab; still seeded and random."""
    from PIL import Image
    from qwen_vl_utils import process_vision_info

    states = []
    for name, prompt in (("square.png", PROMPTS[0]), ("wide.png", PROMPTS[2]), ("tall.jpg", PROMPTS[1])):
        messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(IMAGES / name).convert("RGB")},
                                                 {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, _ = process_vision_info(messages)
        inputs = processor(text=[text], images=images, return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        states.append(out.hidden_states[-1][0, -1])
    h = torch.stack(states).mean(0)
    with torch.no_grad():
        row = 6.0 * h / h.norm() ** 2 + 0.1 * torch.randn(h.shape, generator=gen) / math.sqrt(h.numel())
        model.get_output_embeddings().weight[yes_id] = row


def import_official():
    """t2v-metrics' Qwen2-VL scorer without the package __init__ files (they import every model family);
    ``decord`` (videos only) as an empty module. The modules used are imported unchanged."""
    import importlib.util

    import transformers  # noqa: F401  (its optional-package probes run before the decord stub exists)

    root = Path(importlib.util.find_spec("t2v_metrics").submodule_search_locations[0])
    for name, sub in [("t2v_metrics", ""), ("t2v_metrics.models", "models"),
                      ("t2v_metrics.models.vqascore_models", "models/vqascore_models")]:
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / sub)]
        sys.modules[name] = mod
    decord = types.ModuleType("decord")
    decord.VideoReader = decord.cpu = None  # names imported by qwen2vl_model.py, used for videos only
    sys.modules["decord"] = decord
    from t2v_metrics.models.vqascore_models import qwen2vl_model
    from t2v_metrics.score import Score

    return root, qwen2vl_model, Score


def build(family: str, out: Path, gen: torch.Generator, sizes: dict | None = None) -> dict:
    """The model folder of ``family`` at the tiny sizes, or with ``sizes`` (``{"text": {...}, "vision": {...}}``
    config fields) replacing them (benchmarks/bench_vqascore_qwen.py builds a larger one)."""
    import transformers
    from safetensors.torch import save_file

    spec = FAMILIES[family]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = build_tokenizer(out, spec["specials"])
    cfg = tiny_config(family, spec["specials"], base)
    if sizes:
        cfg.update(sizes.get("text", {}))
        cfg["vision_config"].update(sizes.get("vision", {}))
    ids = {s: base + i for i, s in enumerate(spec["specials"])}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor(spec["processor_class"]), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(ids), indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if family == "qwen2-vl":
        config = transformers.Qwen2VLConfig.from_pretrained(str(out))
        model = transformers.Qwen2VLForConditionalGeneration(config)
    else:
        config = transformers.Qwen2_5_VLConfig.from_pretrained(str(out))
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model.eval()
    redraw(model, gen)
    if cfg["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    yes_id = processor.tokenizer.encode("Yes")[0]
    aim_yes(model, processor, yes_id, gen)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight")  # the published tied checkpoint holds only model.embed_tokens
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return {"config": cfg, "bpe_vocab": base, "yes_id": yes_id}


def main() -> None:
    import accelerate
    import qwen_vl_utils
    import tokenizers
    import transformers
    from importlib.metadata import version
    from PIL import Image

    torch.manual_seed(SEED)
    root, qwen2vl_model, Score = import_official()
    names = sorted(p.name for p in IMAGES.iterdir())
    cases, meta_models = [], {}
    for family, spec in FAMILIES.items():
        gen = torch.Generator().manual_seed(SEED + spec["seed_offset"])
        folder = HERE / family
        built = build(family, folder, gen)
        table = qwen2vl_model.QWEN2_VL_MODELS[spec["model_name"]]
        table["tokenizer"]["path"] = str(folder)
        table["model"]["path"] = str(folder)
        table["model"]["torch_dtype"] = torch.float32
        table["model"]["attn_implementation"] = "sdpa"

        class VQAScore(Score):  # t2v_metrics/vqascore.py, restricted to the Qwen2-VL table
            def prepare_scoremodel(self, model="qwen2.5-vl-7b", device="cuda", cache_dir=None, **kwargs):
                return qwen2vl_model.Qwen2VLModel(model, device=device, cache_dir=cache_dir, **kwargs)

            def list_all_models(self):
                return list(qwen2vl_model.QWEN2_VL_MODELS)

        scorer = VQAScore(model=spec["model_name"], device="cpu")
        official = scorer.model
        assert type(official.model).__name__ == ("Qwen2VLForConditionalGeneration" if family == "qwen2-vl"
                                                 else "Qwen2_5_VLForConditionalGeneration")
        for name in names:
            prompts = PROMPTS[:1] if name == LARGE else PROMPTS
            path = str(IMAGES / name)
            try:
                scores, error = scorer(images=[path], texts=prompts)[0].tolist(), None
            except Exception as exc:  # recorded: the official code cannot score it
                scores, error = [None] * len(prompts), f"{type(exc).__name__}: {exc}"
            for k, (prompt, s) in enumerate(zip(prompts, scores)):
                case = {"model": family, "image": f"../vqascore/images/{name}", "prompt_index": k, "prompt": prompt,
                        "score": s}
                if error:
                    case["official_error"] = error
                else:  # the official inputs, for diagnosis: token count and the image grid (t, h, w) in patches
                    from qwen_vl_utils import process_vision_info

                    messages = [{"role": "user", "content": [{"type": "image", "image": Image.open(path).convert("RGB")},
                                                             {"type": "text", "text": 'Does this image show "{}"?'.format(prompt)}]}]
                    text = official.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                    inputs = official.processor(text=[text], images=process_vision_info(messages)[0], return_tensors="pt")
                    case["n_tokens"] = int(inputs["input_ids"].shape[1])
                    case["grid_thw"] = inputs["image_grid_thw"][0].tolist()
                cases.append(case)
            print(family, name, scores, flush=True)
        # the repetition penalty's effect, recorded for the README: the first case without the processor
        penalty_free = official.model.generation_config.repetition_penalty
        official.model.generation_config.repetition_penalty = 1.0
        no_penalty = scorer(images=[str(IMAGES / names[0])], texts=PROMPTS[3:4])[0].tolist()[0]
        official.model.generation_config.repetition_penalty = penalty_free
        meta_models[family] = {"model_name": spec["model_name"], "yes_id": built["yes_id"],
                               "bpe_vocab": built["bpe_vocab"], "config": built["config"],
                               "without_repetition_penalty": {"image": names[0], "prompt_index": 3,
                                                              "score": no_penalty}}
    with open(HERE / "cases.jsonl", "w") as fh:
        for c in cases:
            fh.write(json.dumps(c, ensure_ascii=False) + "\n")
    meta = {
        "seed": SEED, "question_template": 'Does this image show "{}"?', "answer_template": "Yes",
        "models": meta_models,
        "versions": {"t2v-metrics": version("t2v-metrics"), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": np.__version__, "Pillow": version("Pillow"),
                     "qwen-vl-utils": version("qwen-vl-utils"), "accelerate": accelerate.__version__,
                     "tokenizers": tokenizers.__version__, "torchvision": version("torchvision"),
                     "python": sys.version.split()[0]},
        "t2v_metrics_sources_md5": {p: hashlib.md5((root / p).read_bytes()).hexdigest() for p in (
            "score.py", "vqascore.py", "models/vqascore_models/qwen2vl_model.py",
            "models/vqascore_models/vqa_model.py", "models/vqascore_models/mm_utils.py",
            "models/model.py", "constants.py")},
        "qwen_vl_utils_md5": hashlib.md5(Path(qwen_vl_utils.__file__).with_name("vision_process.py").read_bytes()).hexdigest(),
    }
    (HERE / "set.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
