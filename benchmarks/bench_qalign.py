"""Benchmark: prefscore's native mPLUG-Owl2 (q-align) vs the official Q-Align code, same weights, same images.

The official side is ``Q-Future/Q-Align@14dfdff`` (``q_align/model``, the ``scorer.py`` recipe:
expand2square, ``CLIPImageProcessor.preprocess`` on the batch, ``model(input_ids.repeat(B, 1),
images=...)``, softmax over the level logits) under transformers 4.36.1 in its own environment,
float32 on the CPU with eager attention (4.36.1 picks SDPA on torch >= 2.1.1, which its
``model_forward`` cannot run; eager is what the pinned torch 2.0.1 gets). The official classes
themselves build a random checkpoint of a scaled-down shape (``--shape``), saved with
``save_pretrained`` (bfloat16 ``.bin`` shards, as the published files); both sides then load it.
Times are end to end (files in, scores out) per image, best of ``--rounds`` interleaved rounds.

usage (the official environment: see benchmarks/RESULTS.md, section "Q-Align"):
    python benchmarks/bench_qalign.py --official-python /work/venvs/qalign/bin/python \
        --qalign-src /work/venvs/qalign-src [--n 8] [--rounds 3] [--shape medium]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "q-align"
SMALL_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
               "generation_config.json")
# (LLM hidden, layers, heads, MLP; ViT width, layers, heads, MLP; abstractor width, layers, heads, MLP, queries)
SHAPES = {
    "medium": (1024, 8, 16, 2816, 512, 6, 8, 2048, 512, 2, 8, 1408, 64),
    "small": (256, 4, 4, 688, 256, 4, 4, 1024, 256, 2, 4, 704, 64),
}
PROMPT = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"


# -- official side (run with --official-python, Q-Align on the path) -------------------------------
def _official_imports(fixture_model: str):
    """Import Q-Align's model code; the model's __init__ loads a tokenizer and processor from the hub
    id q-future/one-align: served from the fixture's files (the same tokenizer)."""
    import transformers
    from q_align.model import modeling_mplug_owl2 as mm

    class Redirect:
        def __init__(self, cls):
            self.cls = cls

        def from_pretrained(self, name, *args, **kwargs):
            return self.cls.from_pretrained(fixture_model if name == "q-future/one-align" else name, *args, **kwargs)

    mm.AutoTokenizer = Redirect(transformers.AutoTokenizer)
    mm.CLIPImageProcessor = Redirect(transformers.CLIPImageProcessor)
    return mm


def official_make(out: str, shape: str, fixture_model: str) -> dict:
    import torch

    mm = _official_imports(fixture_model)
    from q_align.model.configuration_mplug_owl2 import MPLUGOwl2Config

    h, layers, heads, mlp, vw, vl, vh, vm, aw, al, ah, am, q = SHAPES[shape]
    config = MPLUGOwl2Config(
        vocab_size=399, hidden_size=h, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
        visual_config={
            "visual_model": {"hidden_size": vw, "intermediate_size": vm, "num_hidden_layers": vl,
                             "num_attention_heads": vh, "image_size": 448, "patch_size": 14, "layer_norm_eps": 1e-6},
            "visual_abstractor": {"hidden_size": aw, "intermediate_size": am, "num_hidden_layers": al,
                                  "num_attention_heads": ah, "num_learnable_queries": q, "encoder_hidden_size": vw,
                                  "grid_size": 32, "layer_norm_eps": 1e-6}})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = mm.MPLUGOwl2LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # post_init leaves norms at 1 and biases at 0: spread them
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") and "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
        model.lm_head.weight.mul_(20)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=False, max_shard_size="200MB")
    for name in SMALL_FILES:
        shutil.copy(Path(fixture_model) / name, Path(out) / name)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def official_score(model_dir: str, images: list[str], rounds: int, fixture_model: str) -> dict:
    import torch
    from PIL import Image

    torch.set_num_threads(2)
    _official_imports(fixture_model)
    from q_align.mm_utils import tokenizer_image_token
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, low_cpu_mem_usage=True,
                                                 attn_implementation="eager").eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    ids = [i[1] for i in tokenizer(["excellent", "good", "fair", "poor", "bad"])["input_ids"]]
    input_ids = tokenizer_image_token(PROMPT, tokenizer, -200, return_tensors="pt").unsqueeze(0)
    weights = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])

    def expand2square(img, bg):  # scorer.py:40-51
        w, h = img.size
        if w == h:
            return img
        s = max(w, h)
        out = Image.new(img.mode, (s, s), bg)
        out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
        return out

    def run(paths):
        batch = [expand2square(Image.open(p), tuple(int(x * 255) for x in processor.image_mean)) for p in paths]
        with torch.inference_mode():
            pixels = processor.preprocess(batch, return_tensors="pt")["pixel_values"]
            logits = model(input_ids.repeat(len(batch), 1), images=pixels)["logits"][:, -1, ids]
            return (torch.softmax(logits, -1) @ weights).tolist()

    run(images[:2])
    times, scores = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        scores = run(images)
        times.append((time.perf_counter() - t) / len(images))
    return {"seconds_per_image": times, "scores": scores}


# -- prefscore side ---------------------------------------------------------------------------------
def ours(model_dir: Path, images: list[Path], rounds: int) -> dict:
    import torch

    import prefscore

    torch.set_num_threads(2)
    metric = prefscore.load("q-align", model=model_dir)
    metric.score(images[:2])
    times, scores = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        scores = metric.score(images, batch_size=len(images))
        times.append((time.perf_counter() - t) / len(images))
    return {"seconds_per_image": times, "scores": np.asarray(scores).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-python", required=True)
    parser.add_argument("--qalign-src", required=True, help="folder holding Q-Align@14dfdff's q_align package")
    parser.add_argument("--shape", default="medium", choices=sorted(SHAPES))
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", choices=["make", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "make":
        print(json.dumps(official_make(args.dir, args.shape, str(FIXTURE / "model"))))
        return
    if args.side == "official":
        print(json.dumps(official_score(args.dir, args.images, args.rounds, str(FIXTURE / "model"))))
        return
    env = {"PYTHONPATH": args.qalign_src, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    model_dir = common.BENCH_DIR / f"qalign-{args.shape}"
    if not (model_dir / "config.json").is_file():
        made = common.run_json([args.official_python, __file__, "--official-python", args.official_python,
                                "--qalign-src", args.qalign_src, "--shape", args.shape, "--side", "make",
                                "--dir", str(model_dir)], env)
        print(f"built {model_dir}: {made['parameters']:,} parameters")
    images = common.make_images(args.n)
    official_cmd = [args.official_python, __file__, "--official-python", args.official_python, "--qalign-src",
                    args.qalign_src, "--side", "official", "--dir", str(model_dir), "--rounds", "1", "--images",
                    *map(str, images)]
    ours_t, theirs_t, ours_scores, theirs_scores = [], [], None, None
    for _ in range(args.rounds):  # interleaved: ours, official, ours, ...
        mine = ours(model_dir, images, 1)
        theirs = common.run_json(official_cmd, env)
        ours_t += mine["seconds_per_image"]
        theirs_t += theirs["seconds_per_image"]
        ours_scores, theirs_scores = np.array(mine["scores"]), np.array(theirs["scores"])
    ratios = [t / o for o, t in zip(ours_t, theirs_t)]
    result = {
        "machine": common.machine(), "shape": args.shape, "n": args.n, "rounds": args.rounds,
        "official_s_per_image": theirs_t, "prefscore_s_per_image": ours_t,
        "speedup_median_paired": common.median(ratios), "speedup_best": min(theirs_t) / min(ours_t),
        "max_abs_score_diff": float(np.abs(ours_scores - theirs_scores).max()),
        "score_spread": float(np.ptp(ours_scores)),
    }
    print(json.dumps(result, indent=1))
    (Path(__file__).parent / "results-qalign.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
