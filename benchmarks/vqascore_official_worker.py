"""The t2v-metrics side of bench_vqascore.py; runs in the official virtualenv (tests/data/vqascore/generate.sh).

``build DIR``: a random CLIP-FlanT5 at the benchmark sizes in the published layout, built with the generator's
own code (tokenizer, tower, offline hub cache). ``serve DIR``: loads ``VQAScore('clip-flant5-xxl')`` on it exactly
as the generator does (float32) and, for each ``run`` line on stdin, scores the images x prompts of the
request and prints ``{"seconds": ..., "scores": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(sys.argv[2]).resolve()
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(OUT / "hub")
sys.path.insert(0, str(ROOT / "tests" / "data" / "vqascore"))

import torch  # noqa: E402

import generate as g  # noqa: E402

SIZES = json.loads(os.environ["VQASCORE_BENCH_SIZES"])


def build() -> None:
    import tempfile

    g.import_official()
    g.VISION.update(SIZES["vision"])
    g.T5.update(SIZES["t5"])
    gen = torch.Generator().manual_seed(g.SEED)
    torch.manual_seed(g.SEED)
    with tempfile.TemporaryDirectory() as work:
        g.build(OUT / "clip-flant5", OUT / "tower", OUT / "hub", Path(work), gen, shard="2GB")
    print("built", OUT)


def serve() -> None:
    _, clip_t5_model, Score, _, _ = g.import_official()
    table = clip_t5_model.CLIP_T5_MODELS["clip-flant5-xxl"]
    table["model"]["path"] = table["tokenizer"]["path"] = str(OUT / "clip-flant5")
    original = clip_t5_model.load_pretrained_model

    def loader_float32(*args, **kwargs):
        tokenizer, model, processor = original(*args, **kwargs)
        return tokenizer, model.float(), processor

    clip_t5_model.load_pretrained_model = loader_float32

    class VQAScore(Score):
        def prepare_scoremodel(self, model="clip-flant5-xxl", device="cuda", cache_dir=None, **kwargs):
            return clip_t5_model.CLIPT5Model(model, device=device, cache_dir=str(OUT / "hub"), **kwargs)

        def list_all_models(self):
            return list(clip_t5_model.CLIP_T5_MODELS)

    scorer = VQAScore(model="clip-flant5-xxl", device="cpu")
    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        scores = scorer(images=request["images"], texts=request["prompts"])
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "scores": scores.flatten().tolist()}), flush=True)


if __name__ == "__main__":
    {"build": build, "serve": serve}[sys.argv[1]]()
