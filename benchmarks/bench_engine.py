"""Benchmarks 2-4 of the scoring engine, each printing ratios measured in one run on this machine.

2. ``e2e``: end-to-end (files -> scores: decode, preprocess, forward) vs forward-only on the same
   pre-decoded batches (the physical limit), and decode+preprocess-only throughput; LAION aesthetic
   on random ViT-B/32 and ViT-L/14 weights, 1024x768 JPEGs.
3. ``shared``: k metrics on one backbone (laion-aesthetic, laion-aesthetic-v1, clipscore on the same
   OpenAI ViT checkpoint, same preprocessing) scored together vs one metric alone vs k separate runs.
4. ``scale``: throughput and peak RSS as N grows (each N in a fresh process, rows streamed to
   Parquet), and the Ray engine vs the local engine on the same images; the tiny fixture CLIP on
   384x288 JPEGs, so the engine's own overhead is what is measured.

usage: python benchmarks/bench_engine.py [e2e] [shared] [scale] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

PROMPT = "a watercolor painting of a lighthouse at dusk"


def bench_e2e(rows: list, archs=("ViT-B-32", "ViT-L-14"), ns=(96, 8), rounds=(8, 4)) -> None:
    """Forward-only, end-to-end (engine defaults; and with the decode threads at normal priority)
    and decode-only, interleaved round by round. The machine's speed drifts by +-10 % between
    runs (shared cores), so the ratio reported is the median of the per-round ratios (each round
    measures both sides within seconds of each other), with their range; the ratio of the best
    runs is printed too."""
    import statistics

    import torch

    import prefscore
    from prefscore.engine import EngineOptions
    from prefscore.engine.local import score_metric
    from prefscore.images import load_image

    for arch, n, k in zip(archs, ns, rounds):
        dirs = common.model_dirs(arch)
        images = common.make_images(n)
        metric = prefscore.load("laion-aesthetic", model=dirs["openai"])
        bs = 16
        workers = min(8, os.cpu_count() or 1)

        def decode_only():
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(lambda p: metric.preprocess(load_image(p, str(p)), str(p)), images))

        tensors = decode_only()

        @torch.inference_mode()
        def forward_only():
            for s in range(0, n, bs):
                metric.forward(torch.stack(tensors[s:s + bs]), None)

        def end_to_end(idle=None):
            return lambda: score_metric(metric, images, None, bs, options=EngineOptions(idle_priority=idle))

        metric.score(images[:2])
        runs = {"forward": forward_only, "e2e": end_to_end(), "e2e_normal_priority": end_to_end(False), "decode": decode_only}
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(k):
            for key, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t)
        row = {"bench": "e2e", "arch": arch, "n": n, "batch": bs, "workers": workers, "rounds": k}
        for key in runs:
            row[f"{key}_img_s"] = n / statistics.median(times[key])
        for key in ("e2e", "e2e_normal_priority"):
            paired = [f / e for f, e in zip(times["forward"], times[key])]
            row[f"{key}_over_forward"] = statistics.median(paired)
            row[f"{key}_over_forward_range"] = [min(paired), max(paired)]
            row[f"{key}_over_forward_best"] = min(times["forward"]) / min(times[key])
        rows.append(row)
        print(f"[e2e] {arch}, N={n}, {k} rounds: forward-only {row['forward_img_s']:.2f} img/s, end-to-end {row['e2e_img_s']:.2f} img/s, "
              f"decode+preprocess only {row['decode_img_s']:.1f} img/s ({workers} threads); end-to-end / forward-only: "
              f"median x{row['e2e_over_forward']:.3f} (rounds {row['e2e_over_forward_range'][0]:.3f}-{row['e2e_over_forward_range'][1]:.3f}, "
              f"bests x{row['e2e_over_forward_best']:.3f}); decode threads at normal priority: median x{row['e2e_normal_priority_over_forward']:.3f} "
              f"(rounds {row['e2e_normal_priority_over_forward_range'][0]:.3f}-{row['e2e_normal_priority_over_forward_range'][1]:.3f})", flush=True)


def bench_shared(rows: list, archs=("ViT-B-32",), ns=(48,), rounds: int = 2) -> None:
    import prefscore
    from prefscore.engine import EngineOptions
    from prefscore.scoring import ScoreJob

    for arch, n in zip(archs, ns):
        dirs = common.model_dirs(arch)
        images = common.make_images(n)
        metrics = {
            "laion-aesthetic": prefscore.load("laion-aesthetic", model=dirs["openai"]),
            "laion-aesthetic-v1": prefscore.load("laion-aesthetic-v1", model=dirs["openai"]),
            "clipscore": prefscore.load("clipscore", model=dirs["openai"]),
        }
        k = len(metrics)

        def job(names, share=True):
            j = ScoreJob({m: metrics[m] for m in names}, batch_size=16, options=EngineOptions(share=share))
            return lambda: j.run(images, PROMPT)

        job(list(metrics))()  # warm-up
        times = {"one": [], "together": [], "separate": [], "unshared": []}
        for _ in range(rounds):
            for key, fns in (("one", [job(["laion-aesthetic"])]), ("together", [job(list(metrics))]),
                             ("separate", [job([m]) for m in metrics]), ("unshared", [job(list(metrics), share=False)])):
                t = time.perf_counter()
                for fn in fns:
                    fn()
                times[key].append(time.perf_counter() - t)
        best = {key: min(v) for key, v in times.items()}
        row = {"bench": "shared", "arch": arch, "n": n, "k": k, "one_s": best["one"], "together_s": best["together"],
               "separate_s": best["separate"], "unshared_s": best["unshared"],
               "together_over_one": best["together"] / best["one"], "separate_over_together": best["separate"] / best["together"]}
        rows.append(row)
        print(f"[shared] {arch}, N={n}: {k} metrics on one backbone together {best['together']:.2f}s = x{row['together_over_one']:.3f} "
              f"of one metric ({best['one']:.2f}s); {k} separate runs {best['separate']:.2f}s "
              f"(x{row['separate_over_together']:.2f} slower); together without sharing {best['unshared']:.2f}s", flush=True)


def _scale_child(n: int, out: str) -> None:
    """One N in a fresh process: ScoreJob streaming to Parquet; prints throughput and peak RSS."""
    import prefscore
    from prefscore.scoring import ScoreJob

    model = common.SHARED / "fixtures" / "laion-aesthetic" / "model"
    images = common.make_images(n, size=(384, 288), distinct=64, folder="scale")
    job = ScoreJob({"laion-aesthetic": prefscore.load("laion-aesthetic", model=model),
                    "laion-aesthetic-v1": prefscore.load("laion-aesthetic-v1", model=model)}, batch_size=32)
    rss_before = common.peak_rss_mib()
    t = time.perf_counter()
    job.run(images, output=Path(out), keep_rows=False)
    dt = time.perf_counter() - t
    print(json.dumps({"n": n, "seconds": dt, "img_s": n / dt, "peak_rss_mib": common.peak_rss_mib(),
                      "rss_before_mib": rss_before, "scored": job.scored}))


def _ray_child(n: int, out: str) -> None:
    import ray

    from prefscore.engine.ray import RayScoreConfig, score_with_ray

    model = str(common.SHARED / "fixtures" / "laion-aesthetic" / "model")
    images = common.make_images(n, size=(384, 288), distinct=64, folder="scale")
    folder = common.BENCH_DIR / "images" / f"ray-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in images:
        if not (folder / p.name).exists():
            os.link(p, folder / p.name)
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - t0
    config = RayScoreConfig(metrics=["laion-aesthetic", "laion-aesthetic-v1"],
                            models={"laion-aesthetic": model, "laion-aesthetic-v1": model}, batch_size=32)
    t = time.perf_counter()
    summary = score_with_ray([str(folder)], out, config)
    dt = time.perf_counter() - t
    print(json.dumps({"n": n, "init_s": t_init, "seconds": dt, "img_s": n / dt, "rows": summary["rows"]}))


def bench_scale(rows: list, ns=(100, 1000, 10000), ray_n: int = 1000) -> None:
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="prefscore-scale-"))
    common.make_images(max(ns), size=(384, 288), distinct=64, folder="scale")
    env = {"HF_HUB_OFFLINE": "1"}
    for n in ns:
        res = common.run_json([sys.executable, __file__, "_scale", str(n), str(tmp / f"local-{n}.parquet")], env=env)
        rows.append({"bench": "scale", "engine": "local", **res})
        print(f"[scale] local N={n}: {res['img_s']:.1f} img/s, peak RSS {res['peak_rss_mib']:.0f} MiB "
              f"(after loading: {res['rss_before_mib']:.0f} MiB)", flush=True)
    if ray_n:
        local = common.run_json([sys.executable, __file__, "_scale", str(ray_n), str(tmp / "local-again.parquet")], env=env)
        res = common.run_json([sys.executable, __file__, "_ray", str(ray_n), str(tmp / "ray-out")], env=env)
        rows.append({"bench": "ray", "engine": "ray", **res, "local_img_s": local["img_s"]})
        print(f"[scale] N={ray_n}: ray engine {res['img_s']:.1f} img/s (+{res['init_s']:.1f}s ray.init) vs local "
              f"{local['img_s']:.1f} img/s: ray/local x{res['img_s'] / local['img_s']:.2f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_scale", "_ray"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        (_scale_child if sys.argv[1] == "_scale" else _ray_child)(int(sys.argv[2]), sys.argv[3])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("benches", nargs="*", default=["e2e", "shared", "scale"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(common.machine())
    rows: list = []
    for name in args.benches:
        {"e2e": bench_e2e, "shared": bench_shared, "scale": bench_scale}[name](rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
