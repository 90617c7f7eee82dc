"""Aesthetic Predictor V2.5: prefscore vs the official package, stage by stage, interleaved on one machine.

Two long-lived workers (``aesthetic_v25_worker.py``) load the same real-size random SigLIP so400m/14
model (``common.siglip_v25_dir``): the official package in its own environment (transformers 4.47.1,
``tests/data/laion-aesthetic-v2.5/make_venv.sh``) and prefscore in its own (transformers 5). Each round
asks both sides, in alternating order, for the same measurements, one side at a time:

* ``preprocess``: decode + processor per image (the official ``SiglipImageProcessor`` vs ``metric.preprocess``);
* ``forward B``: the model alone on the same preprocessed image repeated B times (``inference_mode``),
  with the page faults it takes;
* ``e2e``: files in, scores out (the package's README loop vs ``metric.score``, default batch size;
  ``e2e batch 1``: ``metric.score(..., batch_size=1)``, the official side unchanged).

``--before`` adds a third worker, prefscore as before its CPU memory fixes: glibc's malloc thresholds
as transformers 5's loading leaves them (``PREFSCORE_MALLOC_TUNING=0``, see ``prefscore.memory``) and
the whole batch in one tower call (``SiglipTower.cpu_chunk_bytes``): before / after in one run.

The ratio official / prefscore (>1: prefscore faster) is taken per round and reported as the median
over rounds, with its range. ``--profile`` also prints each side's top operators for one forward.

usage: python benchmarks/bench_aesthetic_v25.py [--rounds 5] [--n 3] [--batches 1 3] [--before] [--e2e-batch1] [--profile]
                                               [--official-python /work/venvs/aes25/bin/python] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402


class Worker:
    def __init__(self, python: str, side: str, model_dir: Path, env: dict | None = None):
        env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), **(env or {}))
        self.proc = subprocess.Popen([python, str(HERE / "aesthetic_v25_worker.py"), side, str(model_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with code {self.proc.wait()}")
        return line

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official-python", default="/work/venvs/aes25/bin/python")
    ap.add_argument("--ours-python", default=sys.executable)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=3, help="images (1024x768 JPEGs) for preprocess and e2e")
    ap.add_argument("--batches", type=int, nargs="*", default=[1], help="forward batch sizes")
    ap.add_argument("--reps", type=int, default=1, help="forwards per batch size per round (the median is kept)")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--e2e-batch1", action="store_true", help="also e2e with metric.score(..., batch_size=1)")
    ap.add_argument("--before", action="store_true",
                    help="also run prefscore as before its CPU memory fixes (ours-before)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    print(common.machine(), "| load average", os.getloadavg(), flush=True)
    model_dir = common.siglip_v25_dir()
    images = [str(p) for p in common.make_images(args.n)]
    sides = {"official": Worker(args.official_python, "official", model_dir),
             "ours": Worker(args.ours_python, "ours", model_dir)}
    if args.before:
        sides["ours-before"] = Worker(args.ours_python, "ours-before", model_dir, {"PREFSCORE_MALLOC_TUNING": "0"})
    for name, w in sides.items():
        print(name, w.info, flush=True)
    ops = [("preprocess", {"op": "preprocess", "images": images}, len(images))]
    ops += [(f"forward B={b}", {"op": "forward", "image": images[0], "batch": b, "reps": args.reps}, b) for b in args.batches]
    if not args.no_e2e:
        ops.append(("e2e", {"op": "e2e", "images": images}, len(images)))
        if args.e2e_batch1:
            ops.append(("e2e batch 1", {"op": "e2e", "images": images, "batch_size": 1}, len(images)))
    per_image = {name: {s: [] for s in sides} for name, _, _ in ops}
    faults = {name: {s: [] for s in sides} for name, _, _ in ops}
    scores = {}
    names = list(sides)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # each side goes first in turn
        for name, req, count in ops:
            for side in order:
                ans = sides[side].ask(**req)
                t = (sum(ans["times"]) if name == "preprocess" else statistics.median(ans["times"])) / count
                per_image[name][side].append(t)
                if "page_faults" in ans:
                    faults[name][side].append(ans["page_faults"] / count)
                if "scores" in ans:
                    scores[(name, side)] = np.asarray(ans["scores"])
            print(f"round {r + 1} {name:12s} " + "  ".join(
                f"{side} {per_image[name][side][-1] * 1e3:8.1f} ms/img" for side in names) + f"  load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name, _, _ in ops:
        for side in names[1:]:
            ratios = [o / u for o, u in zip(per_image[name]["official"], per_image[name][side])]
            diff = (float(np.max(np.abs(scores[(name, "official")] - scores[(name, side)])))
                    if (name, side) in scores else None)
            row = {"stage": name, "side": side, "official_ms_per_img": 1e3 * statistics.median(per_image[name]["official"]),
                   "ms_per_img": 1e3 * statistics.median(per_image[name][side]), "ratio_median": statistics.median(ratios),
                   "ratio_range": [min(ratios), max(ratios)], "rounds": args.rounds, "max_abs_diff": diff}
            if faults[name][side]:
                row["page_faults_per_img"] = statistics.median(faults[name][side])
                row["official_page_faults_per_img"] = statistics.median(faults[name]["official"])
            rows.append(row)
            print(f"{name:12s} {side:15s} official {row['official_ms_per_img']:9.1f} ms/img | {row['ms_per_img']:9.1f} ms/img | "
                  f"x{row['ratio_median']:.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
                  + (f" | max |diff| {diff:.1e}" if diff is not None else "")
                  + (f" | page faults/img {row['page_faults_per_img']:.0f} (official {row['official_page_faults_per_img']:.0f})"
                     if "page_faults_per_img" in row else ""))
    if args.profile:
        for side, w in sides.items():
            print(f"--- {side} ({w.info['transformers']}) one forward, B=1")
            print(w.ask(op="profile", image=images[0])["table"])
    print("load average at the end", os.getloadavg())
    for w in sides.values():
        w.close()
    if args.json:
        args.json.write_text(json.dumps({"workers": {n: w.info for n, w in sides.items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
