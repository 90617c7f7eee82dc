"""prefscore's `vqascore` (Qwen2-VL / Qwen2.5-VL backend) vs t2v-metrics 3.0's Qwen path, same random models.

The official code runs in its own virtualenv (tests/data/vqascore-qwen/make_venv.sh) in a subprocess, prefscore in
this one; both in float32 with 1 torch thread, after a warm-up, on the same (image, prompt) pairs:

* ``--size tiny``: the fixture's tiny models (tests/data/vqascore-qwen/qwen2-vl, qwen2.5-vl) on its small images
  (8 images x 3 prompts): mostly per-call overhead;
* ``--size medium`` (default): models written by the fixture generator at larger sizes (text hidden 512, 4 layers,
  8 heads; vision width 320, depth 8) into $PREFSCORE_BENCH_DIR/vqascore-qwen, on 4 JPEGs of 512x384 / 384x512
  (252 visual tokens each) x 2 prompts.

Rounds alternate the order; the ratio is official seconds / prefscore seconds per round, reported with its median.
Results are printed and written to benchmarks/results-vqascore-qwen-<size>.json.

    .venv/bin/python benchmarks/bench_vqascore_qwen.py [--size medium] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "vqascore-qwen"
IMAGES = REPO / "tests" / "data" / "vqascore" / "images"
VENV = Path(os.environ.get("VQASCORE_QWEN_VENV", "/work/venvs/vqascore-qwen"))
BENCH_DIR = Path(os.environ.get("PREFSCORE_BENCH_DIR", "/tmp/prefscore-bench")) / "vqascore-qwen"
FAMILIES = ("qwen2-vl", "qwen2.5-vl")
TINY_NAMES = ["square.png", "wide.png", "tall.jpg", "rgba.png", "palette_P.png", "exif_rotated.jpg", "gray_L.png",
              "cmyk.jpg"]
TINY_PROMPTS = ["a red fox in the snow",
                "Two dogs and a cat sitting on a bench, photographed at sunset with a wide-angle lens.",
                "café naïve – “quoted” 東京 🦊"]
MEDIUM_PROMPTS = TINY_PROMPTS[:2]
TEXT = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]}}
VISION = {
    "qwen2-vl": {"depth": 8, "embed_dim": 320, "num_heads": 5, "hidden_size": 512},
    "qwen2.5-vl": {"depth": 8, "hidden_size": 320, "intermediate_size": 864, "num_heads": 5, "out_hidden_size": 512,
                   "fullatt_block_indexes": [3, 7]},
}
BUILD = """
import sys, json, torch
sys.path.insert(0, {data!r})
import generate as g
from pathlib import Path
for i, family in enumerate({families!r}):
    g.build(family, Path({out!r}) / family, torch.Generator().manual_seed(g.SEED + 10 + i), json.loads({sizes!r})[family])
"""


def medium_inputs() -> tuple[dict[str, Path], list[Path]]:
    """The medium models (built once by the official venv's generator) and 4 seeded JPEGs."""
    import numpy as np
    from PIL import Image

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    dirs = {f: BENCH_DIR / f for f in FAMILIES}
    if not all((d / "model.safetensors").is_file() for d in dirs.values()):
        sizes = json.dumps({f: {"text": TEXT, "vision": VISION[f]} for f in FAMILIES})
        code = BUILD.format(data=str(DATA), families=FAMILIES, out=str(BENCH_DIR), sizes=sizes)
        subprocess.run([str(VENV / "bin" / "python"), "-c", code], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(512, 384), (384, 512), (512, 384), (384, 512)]):
        path = BENCH_DIR / f"img{i}.jpg"
        if not path.is_file():
            y, x = np.mgrid[0:h, 0:w]
            base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 25, (h, w, 3))
            Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, quality=90)
        images.append(path)
    return dirs, images


def official(family: str, model_dir: Path, images: list[Path], prompts: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [str(VENV / "bin" / "python"), str(REPO / "benchmarks" / "vqascore_qwen_official_worker.py"), family,
           str(model_dir), "1", *[str(p) for p in images], "--", *prompts]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(model_dir: Path, images: list[Path], prompts: list[str]) -> dict:
    import torch

    import prefscore

    torch.set_num_threads(1)
    metric = prefscore.load("vqascore", model=str(model_dir))
    items = [str(p) for p in images for _ in prompts]
    texts = prompts * len(images)
    metric.score(items[:1], texts[:1])  # warm-up
    t = time.perf_counter()
    scores = metric.score(items, texts, batch_size=8)
    return {"seconds": [time.perf_counter() - t], "scores": scores.reshape(len(images), len(prompts)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=("tiny", "medium"), default="medium")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.size == "tiny":
        dirs, images, prompts = {f: DATA / f for f in FAMILIES}, [IMAGES / n for n in TINY_NAMES], TINY_PROMPTS
    else:
        (dirs, images), prompts = medium_inputs(), MEDIUM_PROMPTS
    result = {"size": args.size, "threads": 1, "python": sys.version.split()[0]}
    for family in FAMILIES:
        rows = []
        for r in range(args.rounds):  # interleaved, order alternating
            if r % 2 == 0:
                off = official(family, dirs[family], images, prompts)
                own = ours(dirs[family], images, prompts)
            else:
                own = ours(dirs[family], images, prompts)
                off = official(family, dirs[family], images, prompts)
            diff = max(abs(x - y) for ro, rp in zip(off["scores"], own["scores"]) for x, y in zip(ro, rp))
            rows.append({"official_s": off["seconds"][0], "prefscore_s": own["seconds"][0],
                         "ratio": off["seconds"][0] / own["seconds"][0], "max_abs_diff": diff})
            print(family, rows[-1], flush=True)
        result[family] = {"pairs": len(images) * len(prompts), "rounds": rows,
                          "median_ratio": statistics.median(r["ratio"] for r in rows)}
        print(family, "median ratio", result[family]["median_ratio"], flush=True)
    out = REPO / "benchmarks" / f"results-vqascore-qwen-{args.size}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
