"""prefscore's `vqascore` vs t2v-metrics 3.0 (`VQAScore('clip-flant5-xxl')`), same machine, same random weights.

The official code runs in its own virtualenv (tests/data/vqascore/generate.sh makes it) as a persistent worker;
prefscore runs in this process. Both load the same random CLIP-FlanT5 checkpoint (published layout, float32
compute) and score the same images x prompts; rounds are interleaved (order alternating) and the ratio is the
median of the per-round ratios. Results are printed and written to benchmarks/results-vqascore.json.

    .venv/bin/python benchmarks/bench_vqascore.py [--rounds 3] [--images 4] [--prompts 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("VQASCORE_VENV", "/work/venvs/vqascore"))
BENCH_DIR = Path(os.environ.get("PREFSCORE_BENCH_DIR", "/tmp/prefscore-bench")) / "vqascore"
# CLIP ViT-B/16-width tower at the real 336 px / patch 14 (577 tokens) + flan-t5-small-sized T5
SIZES = {
    "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=512),
    "t5": dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
}
PROMPTS = ["a red fox standing in the snow next to a wooden fence",
           "two cups of coffee on a table, one of them is empty, photographed from above"]


def worker(mode: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(VENV / "bin" / "python"), str(REPO / "benchmarks" / "vqascore_official_worker.py"),
                             mode, str(BENCH_DIR)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, VQASCORE_BENCH_SIZES=json.dumps(SIZES), PYTHONWARNINGS="ignore")
    if not (BENCH_DIR / "clip-flant5" / "config.json").is_file():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(VENV / "bin" / "python"), str(REPO / "benchmarks" / "vqascore_official_worker.py"),
                        "build", str(BENCH_DIR)], check=True, env=env)
    rng = np.random.default_rng(0)
    images = []
    for i in range(args.images):
        path = BENCH_DIR / f"img{i}.jpg"
        if not path.is_file():
            w, h = (1024, 768) if i % 2 == 0 else (768, 1024)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        images.append(str(path))
    prompts = PROMPTS[: args.prompts]

    official = worker("serve", env)
    ready = json.loads(official.stdout.readline())
    import torch

    import prefscore

    metric = prefscore.load("vqascore", model=str(BENCH_DIR / "clip-flant5"), vision_tower=str(BENCH_DIR / "tower"))
    items = [im for im in images for _ in prompts]
    texts = [p for _ in images for p in prompts]

    def run_official():
        official.stdin.write(json.dumps({"images": images, "prompts": prompts}) + "\n")
        official.stdin.flush()
        reply = json.loads(official.stdout.readline())
        return reply["seconds"], np.asarray(reply["scores"])

    def run_ours():
        start = time.perf_counter()
        scores = metric.score(items, texts, batch_size=len(prompts))
        return time.perf_counter() - start, np.asarray(scores)

    run_official(), run_ours()  # warm-up
    rounds = []
    for r in range(args.rounds):
        order = [("official", run_official), ("prefscore", run_ours)]
        if r % 2:
            order.reverse()
        times, scores = {}, {}
        for name, fn in order:
            times[name], scores[name] = fn()
        diff = float(np.max(np.abs(scores["official"] - scores["prefscore"])))
        rounds.append({"official_s": times["official"], "prefscore_s": times["prefscore"],
                       "speedup": times["official"] / times["prefscore"], "max_abs_diff": diff})
        print(json.dumps(rounds[-1]), flush=True)
    official.stdin.close()
    official.wait(timeout=60)
    load = os.getloadavg()
    result = {
        "sizes": SIZES, "images": args.images, "prompts": len(prompts), "pairs": len(items),
        "median_speedup": statistics.median(r["speedup"] for r in rounds),
        "official_median_s": statistics.median(r["official_s"] for r in rounds),
        "prefscore_median_s": statistics.median(r["prefscore_s"] for r in rounds),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds), "rounds": rounds,
        "threads": {"official": ready["threads"], "prefscore": torch.get_num_threads()},
        "loadavg_after": load, "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (REPO / "benchmarks" / "results-vqascore.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
