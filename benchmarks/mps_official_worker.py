"""The official MPS inference (Kwai-Kolors/MPS README), run in the official code's virtualenv for bench_mps.py.

Never imported by prefscore. ``make DIR``: a real-size random MPS (CLIP ViT-H-14 + the official
``Cross_model(dim=1024, layer_num=4, heads=16)``), float16, saved as the release (``torch.save`` of the
whole model), with the laion CLIP-H processor files (real vocabulary) copied beside it. ``serve DIR``:
loads it as the README does (in float32 on CPU), then answers one JSON request per stdin line
(``{"images": [...], "prompt": ...}``: the README's ``infer_example`` on consecutive pairs) with
``{"seconds", "scores"}``.

usage: python mps_official_worker.py make|serve DIR OFFICIAL_CHECKOUT TOKENIZER_DIR THREADS
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from PIL import Image

CONDITION = ("light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, "
             "instance, texture, quantity, attributes, position, number, location, word, things.")
# laion/CLIP-ViT-H-14-laion2B-s32B-b79K config.json
TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, vocab_size=49408,
            max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1)
VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
              patch_size=14, hidden_act="gelu")
FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
         "preprocessor_config.json"]


def make(out: Path, tokenizer_dir: Path) -> None:
    from torch import nn
    from trainer.models.clip_model import CLIPModel as MPSModel, XCLIPModel
    from trainer.models.cross_modeling import Cross_model
    from transformers import CLIPConfig

    torch.manual_seed(0)
    model = MPSModel.__new__(MPSModel)  # = CLIPModel(ckpt) without from_pretrained (no CLIP-H weights here)
    nn.Module.__init__(model)
    model.model = XCLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=1024))
    model.cross_model = Cross_model(dim=1024, layer_num=4, heads=16)
    model.half()
    for layer in model.cross_model.layers:
        layer[1].fn.get_rotary_embedding(257, torch.device("cpu"))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model, out / "MPS_overall_checkpoint.pth")
    for f in FILES:
        shutil.copy(tokenizer_dir / f, out / f)


def serve(model_dir: Path) -> None:
    from transformers import AutoTokenizer, CLIPImageProcessor

    image_processor = CLIPImageProcessor.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    model = torch.load(model_dir / "MPS_overall_checkpoint.pth", weights_only=False)
    model.eval().float()
    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *a, **k: self  # CPU float32 run of the README's fp16 casts

    def process(path):
        return image_processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]

    def tokenize(caption):
        return tokenizer(caption, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                         return_tensors="pt").input_ids

    def infer(images, prompt):
        image_inputs = torch.concatenate([process(images[0]), process(images[1])])
        with torch.no_grad():
            text, f0, f1 = model(tokenize(prompt), image_inputs, tokenize(CONDITION))
            f0, f1, text = (f / f.norm(dim=-1, keepdim=True) for f in (f0, f1, text))
            s0 = model.logit_scale.exp() * torch.diag(torch.einsum("bd,cd->bc", text, f0))
            s1 = model.logit_scale.exp() * torch.diag(torch.einsum("bd,cd->bc", text, f1))
            scores = torch.stack([s0, s1], dim=-1)
            torch.softmax(scores, dim=-1)
        return scores[0].tolist()

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t = time.perf_counter()
        scores = []
        for i in range(0, len(req["images"]), 2):
            scores += infer(req["images"][i: i + 2], req["prompt"])
        print(json.dumps({"seconds": time.perf_counter() - t, "scores": scores}), flush=True)
    torch.Tensor.half = half


if __name__ == "__main__":
    cmd, directory, official, tokenizer_dir, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    sys.path.insert(0, official)
    if cmd == "make":
        make(Path(directory), Path(tokenizer_dir))
    else:
        serve(Path(directory))
