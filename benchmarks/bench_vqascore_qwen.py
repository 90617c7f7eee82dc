"""prefscore's `vqascore` (Qwen2-VL / Qwen2.5-VL backend) vs t2v-metrics 3.0's Qwen path, same tiny random models.

The official code runs in its own virtualenv (tests/data/vqascore-qwen/make_venv.sh) in a subprocess; both score the
fixture's tiny seeded models (tests/data/vqascore-qwen/qwen2-vl, qwen2.5-vl) on the same (image, prompt) pairs in
float32 with 1 torch thread, after a warm-up. Rounds alternate; the ratio is official seconds / prefscore seconds per
round, reported with its median. Results are printed and written to benchmarks/results-vqascore-qwen.json.

    .venv/bin/python benchmarks/bench_vqascore_qwen.py [--rounds 3]
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
NAMES = ["square.png", "wide.png", "tall.jpg", "rgba.png", "palette_P.png", "exif_rotated.jpg", "gray_L.png", "cmyk.jpg"]
PROMPTS = ["a red fox in the snow", "Two dogs and a cat sitting on a bench, photographed at sunset with a wide-angle lens.",
           "café naïve – “quoted” 東京 🦊"]


def official(family: str, rounds: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [str(VENV / "bin" / "python"), str(REPO / "benchmarks" / "vqascore_qwen_official_worker.py"), family,
           str(rounds), *[str(IMAGES / n) for n in NAMES], "--", *PROMPTS]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(family: str, rounds: int) -> dict:
    import torch

    import prefscore

    torch.set_num_threads(1)
    metric = prefscore.load("vqascore", model=str(DATA / family))
    images = [str(IMAGES / n) for n in NAMES for _ in PROMPTS]
    prompts = PROMPTS * len(NAMES)
    metric.score(images[:1], prompts[:1])  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        scores = metric.score(images, prompts, batch_size=8)
        times.append(time.perf_counter() - t)
    return {"seconds": times, "scores": scores.reshape(len(NAMES), len(PROMPTS)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = {}
    for family in ("qwen2-vl", "qwen2.5-vl"):
        rows = []
        for r in range(args.rounds):  # interleaved, order alternating
            first, second = (official, ours) if r % 2 == 0 else (ours, official)
            a, b = first(family, 1), second(family, 1)
            off, own = (a, b) if first is official else (b, a)
            diff = max(abs(x - y) for ro, rp in zip(off["scores"], own["scores"]) for x, y in zip(ro, rp))
            rows.append({"official_s": off["seconds"][0], "prefscore_s": own["seconds"][0],
                         "ratio": off["seconds"][0] / own["seconds"][0], "max_abs_diff": diff})
            print(family, rows[-1], flush=True)
        result[family] = {"pairs": len(NAMES) * len(PROMPTS), "rounds": rows,
                          "median_ratio": statistics.median(r["ratio"] for r in rows)}
        print(family, "median ratio", result[family]["median_ratio"], flush=True)
    result["python"] = sys.version.split()[0]
    (REPO / "benchmarks" / "results-vqascore-qwen.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
