"""Runs an official implementation's scoring loop, as its README / script does, on given images.

Executed with the *official* environment (``/tmp/bench-venv``: torch + torchvision + the official
packages ``clip-anytorch``, ``hpsv2`` and ``image-reward``, the last with its own older
transformers / timm on ``PYTHONPATH``, see RESULTS.md; ``aesthetic-v2.5`` runs with the interpreter of
``tests/data/laion-aesthetic-v2.5/make_venv.sh``), never imported by prefscore. Prints one JSON line:
``{"per_image_s", "scores"}``; ``per_image_s`` is ``(t(N) - t(1)) / (N - 1)``, which removes the
fixed cost each call pays (HPSv2's ``score`` reloads its checkpoint on every call).

usage: python official_runner.py laion|hps|imagereward|aesthetic-v2.5 <model_dir> <arch> <prompt> <image>...
       python official_runner.py imagereward-make <model_dir>   (a random ImageReward.pt of the real size)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch import nn


def laion(model_dir: str, arch: str, prompt: str, images: list[str]):
    """improved-aesthetic-predictor's simple_inference.py: clip.load, one image at a time, numpy
    normalisation, the MLP (no activations)."""
    import clip

    model, preprocess = clip.load(f"{model_dir}/clip.pt", device="cpu", jit=False)
    dim = model.visual.output_dim

    class MLP(nn.Module):
        def __init__(self, input_size):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    mlp = MLP(dim)
    mlp.load_state_dict(torch.load(f"{model_dir}/aesthetic-mlp.pth", map_location="cpu"))
    mlp.eval()

    def normalized(a, axis=-1, order=2):
        l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
        l2[l2 == 0] = 1
        return a / np.expand_dims(l2, axis)

    def run(paths):
        out = []
        for path in paths:
            pil_image = Image.open(path)
            image = preprocess(pil_image).unsqueeze(0)
            with torch.no_grad():
                image_features = model.encode_image(image)
            im_emb_arr = normalized(image_features.cpu().detach().numpy())
            prediction = mlp(torch.from_numpy(im_emb_arr).type(torch.FloatTensor))
            out.append(float(prediction.item()))
        return out

    return run


def hps(model_dir: str, arch: str, prompt: str, images: list[str]):
    """hpsv2.img_score.score with the model built for ``arch`` (the function hard-codes ViT-H-14 and
    downloads its weights; everything else - transforms, per-image loop, checkpoint load - is its own)."""
    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms

    model, _, preprocess_val = create_model_and_transforms(
        arch, None, precision="amp", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False, with_region_predictor=False)
    img_score.model_dict["model"] = model
    img_score.model_dict["preprocess_val"] = preprocess_val
    checkpoint = f"{model_dir}/HPS_v2.1_compressed.pt"

    def run(paths):
        return [float(s) for s in img_score.score(list(paths), prompt, cp=checkpoint)]

    return run


def _import_imagereward(model_dir: str):
    """``import ImageReward`` as its README does, with two offline adjustments that change no number:
    its training module ``ReFL`` (imported by the package's ``__init__``; needs diffusers, datasets,
    accelerate) is left out, and BLIP's ``BertTokenizer.from_pretrained('bert-base-uncased')`` reads
    the same vocabulary from ``<model_dir>/tokenizer`` (no hub here)."""
    import types

    import transformers

    sys.modules["ImageReward.ReFL"] = types.ModuleType("ImageReward.ReFL")
    original = transformers.BertTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        return original(cls, f"{model_dir}/tokenizer" if name == "bert-base-uncased" else name, *args, **kwargs)

    transformers.BertTokenizer.from_pretrained = classmethod(from_pretrained)
    import ImageReward

    return ImageReward


def imagereward_make(model_dir: str) -> None:
    """A real-size ImageReward checkpoint (BLIP ViT-L/16 + BERT-base med encoder + MLP): the package
    builds the model and ``torch.save`` writes its state dict. Every parameter is redrawn from one
    seeded generator first (the package's own initialisation gives the same reward for every image,
    which would make the score comparison empty): matrices ~ N(0, 1/fan_in), embeddings N(0, 0.02),
    norm scales 1 + N(0, 0.1), biases N(0, 0.02)."""
    rm = _import_imagereward(model_dir)
    model = rm.ImageReward(med_config=f"{model_dir}/med_config.json", device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "embed" in name or "cls_token" in name:
                p.copy_(noise * 0.02)
            elif p.dim() >= 2:
                p.copy_(noise * (p[0].numel() ** -0.5))
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
    torch.save(model.state_dict(), f"{model_dir}/ImageReward.pt")
    print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))


def imagereward(model_dir: str, arch: str, prompt: str, images: list[str]):
    """The ImageReward README: ``RM.load(...)`` then ``model.inference_rank(prompt, paths)`` (it
    encodes the images one at a time)."""
    rm = _import_imagereward(model_dir)
    model = rm.load(f"{model_dir}/ImageReward.pt", device="cpu", med_config=f"{model_dir}/med_config.json")

    def run(paths):
        with torch.no_grad():
            _, rewards = model.inference_rank(prompt, list(paths))
        return [float(r) for r in rewards] if isinstance(rewards, list) else [float(rewards)]  # one image: a float

    return run


def aesthetic_v25(model_dir: str, arch: str, prompt: str, images: list[str]):
    """aesthetic-predictor-v2-5's README: ``convert_v2_5_from_siglip``, then per image ``convert("RGB")``,
    the processor and ``model(pixel_values).logits`` (float32 on the CPU: the package's default dtype)."""
    from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

    model, preprocessor = convert_v2_5_from_siglip(predictor_name_or_path=f"{model_dir}/aesthetic_predictor_v2_5.pth",
                                                   encoder_model_name=model_dir, low_cpu_mem_usage=True, trust_remote_code=True)

    def run(paths):
        out = []
        for path in paths:
            image = Image.open(path).convert("RGB")
            pixel_values = preprocessor(images=image, return_tensors="pt").pixel_values
            with torch.inference_mode():
                out.append(float(model(pixel_values).logits.squeeze().float()))
        return out

    return run


def main() -> None:
    if sys.argv[1] == "imagereward-make":
        imagereward_make(sys.argv[2])
        return
    kind, model_dir, arch, prompt, *images = sys.argv[1:]
    torch.manual_seed(0)
    run = {"laion": laion, "hps": hps, "imagereward": imagereward, "aesthetic-v2.5": aesthetic_v25}[kind](model_dir, arch, prompt, images)
    run(images[:2])  # warm-up
    t = time.perf_counter()
    run(images[:1])
    t1 = time.perf_counter() - t
    best = None
    for _ in range(2):
        t = time.perf_counter()
        scores = run(images)
        tn = time.perf_counter() - t
        best = tn if best is None else min(best, tn)
    print(json.dumps({"per_image_s": (best - t1) / (len(images) - 1), "scores": scores, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
