"""How far the official package moves under transformers 5 (not the reference; a measured note).

transformers 5 turned ``SiglipImageProcessor`` into a torchvision backend (the PIL one is now
``SiglipImageProcessorPil``), so the package's ``AestheticPredictorV2_5Processor`` resizes with
torchvision there. This runs the same README recipe as ``generate.py`` on the fixture, in an
environment with transformers 5 + torchvision (e.g. ``pip install torch==2.14.1 torchvision==0.29.1
transformers==5.25.0 accelerate Pillow==13.0.0`` and ``pip install --no-deps aesthetic-predictor-v2-5==2024.12.18.1``),
and prints each image's score next to the recorded transformers 4.47 one::

    /work/venvs/aes25-tf5/bin/python tests/data/laion-aesthetic-v2.5/official_on_transformers5.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from PIL import Image

from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.set_num_threads(1)
    model, processor = convert_v2_5_from_siglip(predictor_name_or_path=str(HERE / "model" / "aesthetic_predictor_v2_5.pth"),
                                                encoder_model_name=str(HERE / "model"))
    print(f"transformers {transformers.__version__}, processor base {type(processor).__mro__[1].__name__}")
    worst = 0.0
    for line in (HERE / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        ref = case.get("score_channels_last", case["score"])
        image = Image.open(HERE / case["image"]).convert("RGB")
        try:
            pixels = processor(images=image, return_tensors="pt").pixel_values
            with torch.inference_mode():
                score = float(model(pixels).logits.squeeze().float())
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"{case['image']:28s} error: {type(exc).__name__}: {exc}")
            continue
        rel = abs(score - ref) / max(1.0, abs(ref))
        worst = max(worst, rel)
        print(f"{case['image']:28s} 4.47: {ref: .6f}  5.x: {score: .6f}  rel {rel:.2e}")
    print(f"largest relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
