"""One side of ``bench_aesthetic_v25.py``: loads Aesthetic Predictor V2.5 once, then answers timing requests.

``official``: the aesthetic-predictor-v2-5 package (``convert_v2_5_from_siglip``, its processor and
``model(pixel_values).logits``), run with the interpreter of ``tests/data/laion-aesthetic-v2.5/make_venv.sh``;
``ours``: ``prefscore.load("laion-aesthetic-v2.5")`` in prefscore's environment. The driver sends one JSON
request per line on stdin and waits for the JSON answer on stdout, so the two sides never compute at once.

``ours-before``: prefscore as before its CPU memory fixes (run with ``PREFSCORE_MALLOC_TUNING=0``).

usage: python aesthetic_v25_worker.py official|ours|ours-before <model_dir>
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from PIL import Image


def load(side: str, model_dir: str):
    """``(preprocess(path) -> (1, 3, 384, 384), forward(pixels) -> (B,), run(paths) -> scores, model)``."""
    if side == "official":
        from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

        model, processor = convert_v2_5_from_siglip(predictor_name_or_path=f"{model_dir}/aesthetic_predictor_v2_5.pth",
                                                    encoder_model_name=model_dir, low_cpu_mem_usage=True, trust_remote_code=True)

        def preprocess(path):
            return processor(images=Image.open(path).convert("RGB"), return_tensors="pt").pixel_values

        def forward(pixels):
            return model(pixels).logits[:, 0]

        def run(paths, batch_size=None):  # the package's README loop, one image per forward
            out = []
            for path in paths:
                with torch.inference_mode():
                    out.append(float(model(preprocess(path)).logits.squeeze().float()))
            return out

        return preprocess, forward, run, model
    import prefscore
    from prefscore.images import load_image

    metric = prefscore.load("laion-aesthetic-v2.5", model=model_dir)
    if side == "ours-before":  # as before the CPU memory fixes: the whole batch in one tower call
        metric.siglip.cpu_chunk_bytes = 1 << 62  # (and PREFSCORE_MALLOC_TUNING=0, set by the driver)

    def preprocess(path):
        return metric.preprocess(load_image(path, str(path)), str(path))[None]

    def run(paths, batch_size=None):
        return [float(s) for s in metric.score(paths, batch_size=batch_size)]

    return preprocess, metric.forward, run, metric.siglip.model


def main() -> None:
    side, model_dir = sys.argv[1:3]
    preprocess, forward, run, model = load(side, model_dir)
    import transformers

    info = {"side": side, "transformers": transformers.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "attn": model.config._attn_implementation}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "preprocess":
            times = []
            for path in req["images"]:
                t = time.perf_counter()
                preprocess(path)
                times.append(time.perf_counter() - t)
            answer = {"times": times}
        elif op == "forward":
            pixels = preprocess(req["image"]).repeat(req["batch"], 1, 1, 1).contiguous()
            times, out = [], None
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with torch.inference_mode():
                for _ in range(req["reps"]):
                    t = time.perf_counter()
                    out = forward(pixels)
                    times.append(time.perf_counter() - t)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / req["reps"]
            answer = {"times": times, "scores": out.float().tolist(), "page_faults": faults}
        elif op == "e2e":
            t = time.perf_counter()
            scores = run(req["images"], req.get("batch_size"))
            answer = {"times": [time.perf_counter() - t], "scores": scores}
        elif op == "profile":
            from torch.profiler import ProfilerActivity, profile

            pixels = preprocess(req["image"])
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                forward(pixels)
            answer = {"table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=req.get("rows", 15))}
        else:
            answer = {"error": f"unknown op {op!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
