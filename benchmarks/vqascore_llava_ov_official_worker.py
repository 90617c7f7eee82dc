"""t2v-metrics 3.0's LLaVA-OneVision scorer as a persistent worker (run in the generator's virtualenv).

Loads tests/data/vqascore-llava-ov/llava-onevision-qwen2-7b-ov the way the generator does (official
``LLaVAOneVisionModel``, tiny SigLIP tower served from an offline hub cache, float32), then answers one JSON
request per stdin line ``{"images": [...], "prompts": [...]}`` with ``{"seconds": s, "scores": [...]}``
(every image x every prompt, image-major, through the official ``forward``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "vqascore-llava-ov"


def main() -> None:
    out, sys.stdout = sys.stdout, sys.stderr  # the llava package prints while importing and loading
    cache = Path(tempfile.mkdtemp(prefix="vqa-llava-ov-bench-")) / "hub"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_CACHE"] = str(cache)
    sys.path.insert(0, str(DATA))
    import torch
    from generate import TOWER_ID, Float32Torch, fake_hub_cache, import_official

    fake_hub_cache(cache, TOWER_ID, DATA / "siglip-so400m-patch14-384")
    _, llavaov_model = import_official()
    for entry in llavaov_model.LLAVA_OV_MODELS.values():
        entry["model"]["path"] = entry["tokenizer"]["path"] = str(DATA / "llava-onevision-qwen2-7b-ov")
    scorer = llavaov_model.LLaVAOneVisionModel("llava-onevision-qwen2-7b-ov", device="cpu")
    scorer.model.float()
    llavaov_model.torch = Float32Torch("torch")
    print(json.dumps({"threads": torch.get_num_threads()}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        paths = [im for im in req["images"] for _ in req["prompts"]]
        texts = [p for _ in req["images"] for p in req["prompts"]]
        start = time.perf_counter()
        scores = scorer.forward(paths, texts).tolist()
        print(json.dumps({"seconds": time.perf_counter() - start, "scores": scores}), file=out, flush=True)


if __name__ == "__main__":
    main()
