"""Shared set-up of the benchmarks: random-weight CLIP checkpoints of real sizes, test images, timing.

Random weights cost exactly the compute of the published ones, so throughput measured on them is
the throughput of the real models. Checkpoints are written once under ``$PREFSCORE_BENCH_DIR``
(default ``/tmp/prefscore-bench``) in three layouts from one OpenAI-format state dict:

* ``<arch>/openai/clip.pt`` (+ random LAION heads): what ``clip.load`` and prefscore's LAION metrics read;
* ``<arch>/hps/HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``, open_clip keys) + ``open_clip_config.json``;
* ``<arch>/hf/``: transformers ``CLIPModel`` + the CLIP tokenizer / processor files.

The tokenizer files are copied from the PickScore fixture (``../shared/fixtures/pickscore/model``):
the standard 49408-token CLIP BPE vocabulary.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREFSCORE_SHARED", REPO.parent / "shared"))
BENCH_DIR = Path(os.environ.get("PREFSCORE_BENCH_DIR", "/tmp/prefscore-bench"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class Arch:
    """A CLIP ViT shape (OpenAI naming)."""

    name: str
    width: int
    layers: int
    patch: int
    embed: int
    text_width: int
    text_layers: int = 12
    image_size: int = 224

    @property
    def open_clip_name(self) -> str:
        return {"ViT-B-32": "ViT-B-32", "ViT-L-14": "ViT-L-14"}[self.name]


ARCHS = {
    "ViT-B-32": Arch("ViT-B-32", width=768, layers=12, patch=32, embed=512, text_width=512),
    "ViT-L-14": Arch("ViT-L-14", width=1024, layers=24, patch=14, embed=768, text_width=768),
}


def _blocks(sd: dict, prefix: str, width: int, layers: int, gen) -> None:
    import torch

    for i in range(layers):
        p = f"{prefix}{i}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * width, width, generator=gen) * width ** -0.5
        sd[p + "attn.in_proj_bias"] = torch.zeros(3 * width)
        sd[p + "attn.out_proj.weight"] = torch.randn(width, width, generator=gen) * width ** -0.5
        sd[p + "attn.out_proj.bias"] = torch.zeros(width)
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = torch.ones(width), torch.zeros(width)
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = torch.ones(width), torch.zeros(width)
        sd[p + "mlp.c_fc.weight"] = torch.randn(4 * width, width, generator=gen) * width ** -0.5
        sd[p + "mlp.c_fc.bias"] = torch.zeros(4 * width)
        sd[p + "mlp.c_proj.weight"] = torch.randn(width, 4 * width, generator=gen) * (4 * width) ** -0.5
        sd[p + "mlp.c_proj.bias"] = torch.zeros(width)


def openai_state_dict(arch: Arch, seed: int = 0) -> dict:
    """A random OpenAI/open_clip-format ViT CLIP state dict of ``arch``'s shape, stored in float16
    (as OpenAI's files: ``clip.load`` rounds to float16 anyway, so every reader sees the same values)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    w, tw = arch.width, arch.text_width
    grid = arch.image_size // arch.patch
    sd = {
        "visual.conv1.weight": torch.randn(w, 3, arch.patch, arch.patch, generator=gen) * (3 * arch.patch ** 2) ** -0.5,
        "visual.class_embedding": torch.randn(w, generator=gen) * w ** -0.5,
        "visual.positional_embedding": torch.randn(grid * grid + 1, w, generator=gen) * w ** -0.5,
        "visual.ln_pre.weight": torch.ones(w), "visual.ln_pre.bias": torch.zeros(w),
        "visual.ln_post.weight": torch.ones(w), "visual.ln_post.bias": torch.zeros(w),
        "visual.proj": torch.randn(w, arch.embed, generator=gen) * w ** -0.5,
        "token_embedding.weight": torch.randn(49408, tw, generator=gen) * 0.02,
        "positional_embedding": torch.randn(77, tw, generator=gen) * 0.01,
        "ln_final.weight": torch.ones(tw), "ln_final.bias": torch.zeros(tw),
        "text_projection": torch.randn(tw, arch.embed, generator=gen) * tw ** -0.5,
        "logit_scale": torch.tensor(4.6052),
    }
    _blocks(sd, "visual.transformer.resblocks.", w, arch.layers, gen)
    _blocks(sd, "transformer.resblocks.", tw, arch.text_layers, gen)
    return {k: v.half() if v.dim() > 0 else v for k, v in sd.items()}


def model_dirs(arch_name: str) -> dict[str, Path]:
    """Create (once) and return the three layouts of one random checkpoint of ``arch_name``."""
    import torch

    arch = ARCHS[arch_name]
    root = BENCH_DIR / "models" / arch_name
    dirs = {"openai": root / "openai", "hps": root / "hps", "hf": root / "hf"}
    if (root / "done").is_file():
        return dirs
    tok = SHARED / "fixtures" / "pickscore" / "model"
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    sd = openai_state_dict(arch)
    torch.save(sd, dirs["openai"] / "clip.pt")
    gen = torch.Generator().manual_seed(1)
    mlp = {}
    for i, (a, b) in zip((0, 2, 4, 6, 7), ((arch.embed, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        mlp[f"layers.{i}.weight"] = torch.randn(b, a, generator=gen) * a ** -0.5
        mlp[f"layers.{i}.bias"] = torch.zeros(b)
    torch.save(mlp, dirs["openai"] / "aesthetic-mlp.pth")
    torch.save({"weight": torch.randn(1, arch.embed, generator=gen) * arch.embed ** -0.5, "bias": torch.zeros(1)},
               dirs["openai"] / "aesthetic-linear.pth")
    torch.save({"state_dict": {k: v.float() for k, v in sd.items()}}, dirs["hps"] / "HPS_v2.1_compressed.pt")
    heads = arch.text_width // 64
    (dirs["hps"] / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": arch.embed,
        "vision_cfg": {"image_size": arch.image_size, "layers": arch.layers, "width": arch.width, "patch_size": arch.patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": arch.text_width, "heads": heads, "layers": arch.text_layers},
    }}))
    shutil.copy(SHARED / "fixtures" / "hpsv2" / "model" / "bpe_simple_vocab_16e6.txt.gz", dirs["hps"])
    from prefscore.backbones.clip import OPENAI_ARCH, clip_from_state_dict

    model = clip_from_state_dict({k: v.float() for k, v in sd.items()}, OPENAI_ARCH, "bench")
    model.save_pretrained(dirs["hf"])
    for name in TOKENIZER_FILES + ("preprocessor_config.json",):
        shutil.copy(tok / name, dirs["hf"] / name)
    for name in TOKENIZER_FILES:  # clipscore's text side on the OpenAI checkpoint (no processor config: OpenAI transform)
        shutil.copy(tok / name, dirs["openai"] / name)
    (root / "done").write_text("ok")
    return dirs


#: ImageReward's text config (BLIP "med" BERT-base with cross-attention to ViT-L's 1024-wide tokens),
#: the fields of ``THUDM/ImageReward``'s ``med_config.json``
IMAGEREWARD_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524, "encoder_width": 1024, "add_cross_attention": True,
}


def imagereward_dir(official_python: str, official_path: str) -> Path:
    """A real-size random ImageReward model directory (``ImageReward.pt`` built and saved by the
    official package itself in its environment, ``med_config.json``, the bert-base-uncased vocabulary
    from the fixture), created once."""
    root = BENCH_DIR / "models" / "imagereward"
    if (root / "done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / "med_config.json").write_text(json.dumps(IMAGEREWARD_MED_CONFIG, indent=1))
    shutil.copytree(SHARED / "fixtures" / "imagereward" / "model" / "tokenizer", root / "tokenizer", dirs_exist_ok=True)
    run_json([official_python, str(Path(__file__).parent / "official_runner.py"), "imagereward-make", str(root)],
             env={"PYTHONPATH": official_path} if official_path else None)
    (root / "done").write_text("ok")
    return root


#: google/siglip-so400m-patch14-384's vision tower (SiglipVisionConfig of its config.json)
SIGLIP_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                 "image_size": 384, "patch_size": 14}
SIGLIP_PREPROCESSOR = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                       "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
                       "processor_class": "SiglipProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                       "size": {"height": 384, "width": 384}}


def siglip_v25_dir() -> Path:
    """A real-size random Aesthetic Predictor V2.5 model directory, created once: the so400m vision tower
    (``SiglipVisionModel`` with transformers' own random init, seeded; ~428M parameters, 1.7 GB float32),
    so400m's ``preprocessor_config.json`` and a random head ``aesthetic_predictor_v2_5.pth`` (an
    ``OrderedDict`` with the package's ``scoring_head.N`` keys)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from prefscore.metrics.aesthetic import AestheticV25Head

    root = BENCH_DIR / "models" / "siglip-so400m-v25"
    if (root / "done").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_SO400M))
    model.config.save_pretrained(root)
    # tensor names as published (vision_model.*): transformers 5's save_pretrained drops that prefix, which
    # transformers 4.x (the official package's) would not load, silently keeping its random init instead
    save_file({k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous() for k, v in model.state_dict().items()},
              str(root / "model.safetensors"), metadata={"format": "pt"})
    (root / "preprocessor_config.json").write_text(json.dumps(SIGLIP_PREPROCESSOR, indent=1))
    torch.save(AestheticV25Head(SIGLIP_SO400M["hidden_size"]).state_dict(), root / "aesthetic_predictor_v2_5.pth")
    (root / "done").write_text("ok")
    return root


def make_images(n: int, size: tuple[int, int] = (1024, 768), distinct: int = 16, folder: str | None = None) -> list[Path]:
    """``n`` JPEG files of ``size`` (``distinct`` different photos-like images, the rest copies)."""
    from PIL import Image, ImageFilter

    folder_path = BENCH_DIR / "images" / (folder or f"{size[0]}x{size[1]}-{distinct}")
    folder_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seeds = []
    for k in range(distinct):
        path = folder_path / f"seed{k:03d}.jpg"
        if not path.is_file():
            base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize(size, Image.BICUBIC)
            noise = Image.fromarray(rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8))
            img = Image.blend(img, noise, 0.15).filter(ImageFilter.SMOOTH)
            img.save(path, quality=90)
        seeds.append(path)
    out = []
    for i in range(n):
        if i < distinct:
            out.append(seeds[i])
            continue
        path = folder_path / f"img{i:06d}.jpg"
        if not path.exists():
            os.link(seeds[i % distinct], path)
        out.append(path)
    return out


def timed(fn: Callable[[], object], repeat: int = 2) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (the least disturbed by other processes) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores visible, {mem:.0f} GiB RAM; "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (``VmHWM``; ``ru_maxrss`` would carry the parent's peak
    across fork + exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs):
    return statistics.median(xs)


def run_json(cmd: list[str], env: dict | None = None, timeout: int = 1800) -> dict:
    """Run a helper that prints one JSON object on its last stdout line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def python() -> str:
    return sys.executable
