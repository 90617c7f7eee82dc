"""Benchmark 1: prefscore vs the official implementations, same architecture, same images, same machine.

For each CLIP shape (ViT-B/32, ViT-L/14; random weights = the real compute) and each metric whose
official code runs here, images/s end to end (files in, scores out), the ratio, and the largest
score difference (the same weights go through both, so the numbers must agree):

* LAION aesthetic v2: improved-aesthetic-predictor's ``simple_inference.py`` loop (``clip.load``,
  one image at a time), run in the official environment (``--official-python``);
* HPS v2.1: ``hpsv2.img_score.score`` (per-image loop, open_clip transforms), official environment;
* PickScore: the README loop (``AutoProcessor`` + ``AutoModel``, all candidates of a prompt in one
  batch), in prefscore's environment (transformers 5; ``get_*_features`` return an output object
  there, so ``.pooler_output`` is taken - the only change);
* CLIP-IQA: ``torchmetrics.multimodal.CLIPImageQualityAssessment`` (HF branch) on the decoded image
  tensors (decoding, which torchmetrics leaves to the caller, is timed too), with torchmetrics from
  ``--torchmetrics-site`` (``pip install --target DIR torchmetrics``) so prefscore's env is untouched.

* ImageReward: the package's README (``ImageReward.load`` + ``inference_rank``, images encoded one
  at a time) on a real-size random checkpoint (BLIP ViT-L/16 + BERT-base; built by the package
  itself), official environment with ``--imagereward-path`` (transformers 4.40 / timm 0.6.13, the
  package's pins, installed with ``pip --target``) in front; run once, not per ``--archs`` entry.
* Aesthetic Predictor V2.5: the package's README loop (``convert_v2_5_from_siglip``, one image per
  forward, float32) on a real-size random SigLIP so400m-patch14-384 vision tower + head, in the
  environment of ``tests/data/laion-aesthetic-v2.5/make_venv.sh`` (``--aesthetic-v25-python``;
  transformers 4.47.1, torch 2.13.0); run once, not per ``--archs`` entry.

usage: python benchmarks/bench_official.py [--archs ViT-B-32 ViT-L-14] [--official-python /tmp/bench-venv/bin/python]
                                           [--imagereward-n 6 | 0 to leave it out] [--aesthetic-v25-n 3 | 0]
                                           [--rounds R] [--metrics NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

PROMPT = "a watercolor painting of a lighthouse at dusk"


def ours(metric, images, prompt=None, rounds: int = 2) -> tuple[float, np.ndarray]:
    """Seconds per image (best of ``rounds``) of ``metric.score`` on files, after a warm-up."""
    metric.score(images[:2], prompt) if prompt else metric.score(images[:2])
    best, scores = None, None
    for _ in range(rounds):
        t = time.perf_counter()
        scores = metric.score(images, prompt) if prompt else metric.score(images)
        dt = (time.perf_counter() - t) / len(images)
        best = dt if best is None else min(best, dt)
    return best, np.asarray(scores, dtype=np.float64).reshape(len(images), -1)[:, 0]


def pickscore_readme(model_dir: Path, images, batch: int, rounds: int = 2) -> tuple[float, np.ndarray]:
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def calc_probs(prompt, pil_images):
        image_inputs = processor(images=pil_images, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            image_embs = feats(model.get_image_features(**image_inputs))
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = feats(model.get_text_features(**text_inputs))
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            scores = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        return scores

    def run():
        out = []
        for s in range(0, len(images), batch):
            out.extend(calc_probs(PROMPT, [Image.open(p) for p in images[s:s + batch]]).tolist())
        return out

    run_images = images
    images = run_images[:2]
    run()
    images = run_images
    best, scores = None, None
    for _ in range(rounds):
        t = time.perf_counter()
        scores = run()
        dt = (time.perf_counter() - t) / len(images)
        best = dt if best is None else min(best, dt)
    return best, np.asarray(scores)


def clipiqa_torchmetrics(model_dir: Path, images, batch: int, site: str, rounds: int = 2) -> tuple[float, np.ndarray]:
    import torch
    from PIL import Image

    if site not in sys.path:
        sys.path.append(site)
    from torchmetrics.multimodal import CLIPImageQualityAssessment
    from transformers import CLIPModel, CLIPProcessor

    def model_and_processor():  # torchmetrics' own loader only accepts hub names; same calls on our folder
        return CLIPModel.from_pretrained(str(model_dir)), CLIPProcessor.from_pretrained(str(model_dir))

    # uint8-valued input with data_range=1: the CLIP processor then rescales by 1/255 once. (The documented
    # data_range=255 for such input divides twice and gives other numbers; see REFERENCE-METRICS.md.)
    metric = CLIPImageQualityAssessment(model_name_or_path=model_and_processor, data_range=1.0, prompts=("quality",))

    def run(paths):
        out = []
        for s in range(0, len(paths), batch):
            tensors = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths[s:s + batch]]
            out.extend(metric(torch.stack(tensors).float()).reshape(-1).tolist())
            metric.reset()
        return out

    run(images[:2])
    best, scores = None, None
    for _ in range(rounds):
        t = time.perf_counter()
        scores = run(images)
        dt = (time.perf_counter() - t) / len(images)
        best = dt if best is None else min(best, dt)
    return best, np.asarray(scores)


def official(kind: str, model_dir: Path, arch: str, images, python: str, path: str | None = None) -> tuple[float, np.ndarray, str]:
    res = common.run_json([python, str(Path(__file__).parent / "official_runner.py"), kind, str(model_dir), arch, PROMPT,
                           *map(str, images)], env={"PYTHONPATH": path} if path else None)
    return res["per_image_s"], np.asarray(res["scores"]), res["torch"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", nargs="*", default=["ViT-B-32", "ViT-L-14"])
    ap.add_argument("--n", type=int, nargs="+", default=[32, 12], help="images per arch")
    ap.add_argument("--official-python", default="/tmp/bench-venv/bin/python")
    ap.add_argument("--torchmetrics-site", default="/tmp/tm-site")
    ap.add_argument("--imagereward-path", default="/tmp/ir-site", help="PYTHONPATH with image-reward's transformers/timm pins")
    ap.add_argument("--imagereward-n", type=int, default=6, help="images for the ImageReward comparison (0: skip it)")
    ap.add_argument("--aesthetic-v25-python", default="/work/venvs/aes25/bin/python",
                    help="interpreter with aesthetic-predictor-v2-5 (tests/data/laion-aesthetic-v2.5/make_venv.sh)")
    ap.add_argument("--aesthetic-v25-n", type=int, default=0, help="images for the Aesthetic Predictor V2.5 comparison (0: skip it)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved (ours, official) rounds per case")
    ap.add_argument("--metrics", nargs="*", default=None, help="only these cases (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import prefscore

    print(common.machine())
    rows = []
    runs = list(zip(args.archs, args.n))
    if args.imagereward_n:
        runs.append(("BLIP ViT-L/16", args.imagereward_n))
    if args.aesthetic_v25_n:
        runs.append(("SigLIP so400m/14 @384", args.aesthetic_v25_n))
    for arch, n in runs:
        if arch.startswith("SigLIP"):
            v25_dir = common.siglip_v25_dir()
            images = common.make_images(n)
            compare(rows, arch, n, [("laion-aesthetic-v2.5", lambda: prefscore.load("laion-aesthetic-v2.5", model=v25_dir), None,
                                      lambda: official("aesthetic-v2.5", v25_dir, arch, images, args.aesthetic_v25_python),
                                      "README loop (1 image per forward)")], images, args.rounds, args.metrics)
            continue
        if arch == "BLIP ViT-L/16":
            ir_dir = common.imagereward_dir(args.official_python, args.imagereward_path)
            images = common.make_images(n)
            compare(rows, arch, n, [("imagereward", lambda: prefscore.load("imagereward", model=ir_dir), PROMPT,
                                      lambda: official("imagereward", ir_dir, arch, images, args.official_python, args.imagereward_path),
                                      "README inference_rank loop")], images, args.rounds, args.metrics)
            continue
        dirs = common.model_dirs(arch)
        images = common.make_images(n)
        bs = 16
        cases = [
            ("laion-aesthetic", lambda: prefscore.load("laion-aesthetic", model=dirs["openai"]), None,
             lambda: official("laion", dirs["openai"], arch, images, args.official_python), "simple_inference.py loop"),
            ("hpsv2.1", lambda: prefscore.load("hpsv2.1", model=dirs["hps"]), PROMPT,
             lambda: official("hps", dirs["hps"], arch, images, args.official_python), "hpsv2.img_score.score"),
            ("pickscore", lambda: prefscore.load("pickscore", model=dirs["hf"]), PROMPT,
             lambda: (*pickscore_readme(dirs["hf"], images, bs), "ours"), "README loop (batch 16)"),
            ("clip-iqa", lambda: prefscore.load("clip-iqa", model=dirs["hf"]), None,
             lambda: (*clipiqa_torchmetrics(dirs["hf"], images, bs, args.torchmetrics_site), "ours"), "torchmetrics (batch 16)"),
        ]
        compare(rows, arch, n, cases, images, args.rounds, args.metrics)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def compare(rows: list, arch: str, n: int, cases: list, images, rounds: int, only: list[str] | None) -> None:
    """Per case: ``rounds`` x (ours, official), then ours once more; the speed-up is the median of the
    per-round ratios (official time / the mean of the ours runs on either side of it), which cancels
    the machine's drift between rounds; its range over rounds is printed with it."""
    import statistics

    for name, load, prompt, run_official, label in cases:
        if only and name not in only:
            continue
        metric = load()
        t_ours, s_ours = ours(metric, images, prompt)
        ours_t, off_t, ratios = [t_ours], [], []
        for _ in range(rounds):
            t_off, s_off, off_torch = run_official()
            t_next, _ = ours(metric, images, prompt)
            ratios.append(t_off / ((ours_t[-1] + t_next) / 2))
            ours_t.append(t_next)
            off_t.append(t_off)
            print(f"  round {len(ratios)}: ours {ours_t[-2]:.3f} s/img, official {t_off:.3f} s/img, ours {t_next:.3f} s/img, "
                  f"ratio {ratios[-1]:.3f}, max |diff| {float(np.max(np.abs(s_ours - s_off))):.2e}", flush=True)
        del metric
        row = {"arch": arch, "metric": name, "official": label, "n": n, "rounds": rounds,
               "ours_img_s": 1 / statistics.median(ours_t), "official_img_s": 1 / statistics.median(off_t),
               "speedup": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
               "max_abs_diff": float(np.max(np.abs(s_ours - s_off))), "official_torch": off_torch}
        rows.append(row)
        spread = f" (rounds {min(ratios):.2f}-{max(ratios):.2f})" if rounds > 1 else ""
        print(f"{arch:9s} {name:16s} ours {row['ours_img_s']:7.2f} img/s | {label:28s} {row['official_img_s']:7.2f} img/s | "
              f"x{row['speedup']:.2f}{spread} | max |diff| {row['max_abs_diff']:.2e}", flush=True)


if __name__ == "__main__":
    main()
