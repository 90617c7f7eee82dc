"""prefscore's `vqascore` (LLaVA-OneVision backend) vs t2v-metrics 3.0 (`VQAScore('llava-onevision-qwen2-7b-ov')`).

Same machine, same tiny random checkpoint (tests/data/vqascore-llava-ov), float32. The official code runs in the
generator's virtualenv (tests/data/vqascore-llava-ov/generate.sh makes it; the LLaVA-NeXT source from
$LLAVA_NEXT_SRC) as a persistent worker; prefscore runs in this process. Rounds are interleaved (order alternating)
and the ratio is the median of the per-round ratios. Written to benchmarks/results-vqascore-llava-ov.json.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_vqascore_llava_ov.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("VQASCORE_LLAVA_OV_VENV", "/work/venvs/vqascore-llava-ov"))
LLAVA_NEXT_SRC = os.environ.get("LLAVA_NEXT_SRC", "/work/venvs/llava-next-src")
DATA = REPO / "tests" / "data" / "vqascore-llava-ov"
IMAGES = [str(REPO / "tests" / "data" / "vqascore" / "images" / n) for n in ("square.png", "wide.png", "tall.jpg", "large.jpg")]
PROMPTS = ["a red fox standing in the snow next to a wooden fence",
           "two cups of coffee on a table, one of them is empty, photographed from above"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=LLAVA_NEXT_SRC, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    official = subprocess.Popen([str(VENV / "bin" / "python"), str(REPO / "benchmarks" / "vqascore_llava_ov_official_worker.py")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ready = json.loads(official.stdout.readline())
    import torch

    import prefscore

    metric = prefscore.load("vqascore", model=str(DATA / "llava-onevision-qwen2-7b-ov"),
                            vision_tower=str(DATA / "siglip-so400m-patch14-384"))
    items = [im for im in IMAGES for _ in PROMPTS]
    texts = [p for _ in IMAGES for p in PROMPTS]

    def run_official():
        official.stdin.write(json.dumps({"images": IMAGES, "prompts": PROMPTS}) + "\n")
        official.stdin.flush()
        reply = json.loads(official.stdout.readline())
        return reply["seconds"], np.asarray(reply["scores"])

    def run_ours():
        start = time.perf_counter()
        scores = metric.score(items, texts, batch_size=8)
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
        rounds.append({"official_s": times["official"], "prefscore_s": times["prefscore"],
                       "speedup": times["official"] / times["prefscore"],
                       "max_abs_diff": float(np.max(np.abs(scores["official"] - scores["prefscore"])))})
        print(json.dumps(rounds[-1]), flush=True)
    official.stdin.close()
    official.wait(timeout=60)
    result = {
        "model": "tests/data/vqascore-llava-ov (tiny random)", "pairs": len(items),
        "median_speedup": statistics.median(r["speedup"] for r in rounds),
        "official_median_s": statistics.median(r["official_s"] for r in rounds),
        "prefscore_median_s": statistics.median(r["prefscore_s"] for r in rounds),
        "max_abs_diff": max(r["max_abs_diff"] for r in rounds), "rounds": rounds,
        "threads": {"official": ready["threads"], "prefscore": torch.get_num_threads()},
        "loadavg_after": os.getloadavg(), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (REPO / "benchmarks" / "results-vqascore-llava-ov.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
