"""MPS: prefscore vs the official Kwai-Kolors/MPS inference, real size (CLIP ViT-H-14 + Cross_model 1024x4),
random weights (the real compute), same machine, same images, interleaved rounds in one run.

The official README loop (``infer_example`` on pairs: processor, prompt and condition tokenised and
encoded for every pair, the model in float32 on CPU) runs in the official code's virtualenv
(``--official-python``, see tests/data/mps/generate.sh) as a persistent worker
(mps_official_worker.py); prefscore runs here. Each round scores the same N images for one prompt
with both, alternating which goes first; prefscore's text cache (prompt and condition) is cleared
before each of its rounds, so both pay the text encoding in every round. Reports per-round seconds,
the median of the per-round ratios and the largest score difference.

usage: python benchmarks/bench_mps.py --official-python /work/venvs/mps/bin/python --official-code DIR
                                      [--tokenizer ../shared/fixtures/pickscore/model] [-n 8] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

PROMPT = "a watercolor painting of a lighthouse at dusk"
WORKER = Path(__file__).parent / "mps_official_worker.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-python", required=True)
    ap.add_argument("--official-code", required=True)
    ap.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "shared/fixtures/pickscore/model"))
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import prefscore

    torch.set_num_threads(args.threads)
    model_dir = common.BENCH_DIR / "models" / "mps-vit-h-14"
    common_args = [args.official_code, args.tokenizer, str(args.threads)]
    if not (model_dir / "MPS_overall_checkpoint.pth").is_file():
        t = time.perf_counter()
        subprocess.run([args.official_python, str(WORKER), "make", str(model_dir), *common_args], check=True)
        print(f"made the real-size random checkpoint in {time.perf_counter() - t:.0f} s", flush=True)
    images = [str(p) for p in common.make_images(args.n, (1024, 768))]

    worker = subprocess.Popen([args.official_python, str(WORKER), "serve", str(model_dir), *common_args],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def reply() -> dict:  # the worker's JSON lines (the tokenizers library prints notes to stdout too)
        while True:
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the official worker exited")
            if line.startswith("{"):
                return json.loads(line)

    assert reply()["ready"]

    def official(paths):
        worker.stdin.write(json.dumps({"images": paths, "prompt": PROMPT}) + "\n")
        worker.stdin.flush()
        answer = reply()
        return answer["seconds"], np.asarray(answer["scores"])

    metric = prefscore.load("mps", model=str(model_dir))

    def ours(paths):
        metric._text_cache.clear()
        metric._condition_tokens = None
        t = time.perf_counter()
        scores = metric.score(paths, PROMPT, batch_size=len(paths))
        return time.perf_counter() - t, np.asarray(scores)

    official(images[:2]), ours(images[:2])  # warm-up
    rounds = []
    for r in range(args.rounds):
        order = [("official", official), ("prefscore", ours)]
        if r % 2:
            order.reverse()
        res = {name: fn(images) for name, fn in order}
        rounds.append({"official_s": res["official"][0], "prefscore_s": res["prefscore"][0],
                       "speedup": res["official"][0] / res["prefscore"][0]})
        diff = np.abs(res["official"][1] - res["prefscore"][1]) / np.maximum(1.0, np.abs(res["official"][1]))
        rounds[-1]["max_rel_score_diff"] = float(diff.max())
        print(json.dumps(rounds[-1]), flush=True)
    worker.stdin.close()
    worker.wait()
    out = {"machine": common.machine(), "n_images": args.n, "image_size": "1024x768 JPEG", "threads": args.threads,
           "rounds": rounds, "median_speedup": common.median([r["speedup"] for r in rounds])}
    print(json.dumps(out, indent=1))
    (Path(__file__).parent / "results-mps.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
