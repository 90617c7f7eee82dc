"""prefscore's `hpsv3` vs the official package (hpsv3 1.0.0), same machine, same weights, same images.

The official code needs transformers 4.45.2 and prefscore transformers 5, so the two sides run in their own
environments: the official one in a long-lived subprocess (``hpsv3_official.py serve`` under
``--official-python``, default ``/work/venvs/hpsv3/bin/python`` from ``tests/data/hpsv3/make_venv.sh``) that loads
the model once, prefscore in this process. Rounds are interleaved (official, ours, official, ...): each round
scores the same N images (1024x768 JPEGs) with one prompt, ``--batch`` images per forward on both sides, and the
reported ratio is the median of the per-round ratios official/ours (> 1: prefscore faster).

Weights: a random HPSv3 model in the published layout (``HPSv3.safetensors`` + Qwen files), made by the official
package (``hpsv3_official.py make``). The 7B model would not fit twice in float32 on a 24 GiB machine nor run in
useful time on 2 cores, so the Qwen2-VL is scaled down (default: text hidden 896, 4 layers, 14 heads / 2 KV
heads, MLP 4864, as Qwen2-0.5B's width; vision width 640, depth 4, 10 heads; 256 image tokens per image and
the real instruction prompt, so the sequence is as long as the real one's). Both sides compute in float32.

usage: python benchmarks/bench_hpsv3.py [--n 8] [--rounds 3] [--batch 4] [--official-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPT = "cute chibi anime cartoon fox, smiling wagging tail with a small cartoon heart above sticker"
SIZES = {"hidden_size": 896, "num_hidden_layers": 4, "num_attention_heads": 14, "num_key_value_heads": 2,
         "intermediate_size": 4864, "max_window_layers": 4, "rope_scaling": {"type": "mrope", "mrope_section": [16, 8, 8]},
         "vision_config": {"embed_dim": 640, "depth": 4, "num_heads": 10}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--official-python", default="/work/venvs/hpsv3/bin/python")
    ap.add_argument("--out", default=str(HERE / "results-hpsv3.json"))
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = common.BENCH_DIR / "hpsv3-medium"
    if not (model_dir / "HPSv3.safetensors").is_file():
        made = common.run_json([args.official_python, str(HERE / "hpsv3_official.py"), "make", str(model_dir), json.dumps(SIZES)],
                               env={"CUDA_VISIBLE_DEVICES": ""})
        print(f"made {model_dir}: {made['params'] / 1e6:.1f}M parameters", flush=True)
    images = [str(p) for p in common.make_images(args.n, (1024, 768), distinct=args.n, folder="hpsv3")]

    official = subprocess.Popen([args.official_python, str(HERE / "hpsv3_official.py"), "serve", str(model_dir)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(os.cpu_count())})
    while (line := official.stdout.readline()) and line.strip() != "ready":
        pass

    import prefscore

    metric = prefscore.load("hpsv3", model=str(model_dir))
    job = json.dumps({"images": images, "prompt": PROMPT, "batch": args.batch}) + "\n"

    def theirs():
        official.stdin.write(job)
        official.stdin.flush()
        reply = json.loads(official.stdout.readline())
        return reply["seconds"], np.array(reply["mu"])

    def ours():
        start = time.perf_counter()
        out = metric.score(images, PROMPT, batch_size=args.batch)
        return time.perf_counter() - start, out[:, 0]

    rounds = []
    for r in range(args.rounds):
        t_off, mu_off = theirs()
        t_ours, mu_ours = ours()
        rounds.append({"official_s": t_off, "prefscore_s": t_ours, "ratio": t_off / t_ours,
                       "max_abs_mu_diff": float(np.abs(mu_off - mu_ours).max())})
        print(json.dumps(rounds[-1]), flush=True)
    official.stdin.close()
    official.wait(timeout=60)
    ratios = [x["ratio"] for x in rounds]
    result = {
        "machine": common.machine(), "load_average_at_end": os.getloadavg(), "n": args.n, "batch": args.batch,
        "rounds": rounds, "median_ratio": common.median(ratios), "range": [min(ratios), max(ratios)],
        "official_img_s": args.n / common.median([x["official_s"] for x in rounds]),
        "prefscore_img_s": args.n / common.median([x["prefscore_s"] for x in rounds]),
        "max_abs_mu_diff": max(x["max_abs_mu_diff"] for x in rounds), "sizes": SIZES,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
