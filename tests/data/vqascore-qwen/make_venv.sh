#!/usr/bin/env bash
# t2v-metrics 3.0's Qwen2-VL / Qwen2.5-VL VQAScore path in its own virtualenv (never the project's .venv).
# t2v-metrics 3.0 declares ~70 dependencies; it is installed with --no-deps plus what its Qwen path imports:
# transformers 4.49.0 and numpy 1.26.4 (the official pins); qwen-vl-utils 0.0.11 (unpinned by t2v-metrics: the release
# current when t2v-metrics 3.0 was published on 2025-09-13), itself --no-deps (av is for videos only);
# Pillow 10.0.0 (the official pin; Pillow 13's resize pass order differs on some shapes: README.md);
# qwen_vl_utils imports torchvision, so torch 2.13.0 (which cannot sit beside a torchvision) is not usable:
# torch 2.14.1 + torchvision 0.29.1 (the recipe of tests/data/hpsv3/make_venv.sh); accelerate, since
# from_pretrained(device_map="auto") needs it; opencv-python-headless, since score.py imports mm_utils, which imports
# cv2 (as for tests/data/vqascore).
set -euo pipefail
VENV=${VQASCORE_QWEN_VENV:-/work/venvs/vqascore-qwen}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q transformers==4.49.0 numpy==1.26.4 Pillow==10.0.0 accelerate==1.10.1 safetensors tokenizers \
      opencv-python-headless==4.10.0.84
  "$VENV/bin/pip" install -q --no-deps qwen-vl-utils==0.0.11 t2v-metrics==3.0
fi
"$VENV/bin/python" -c "import transformers, torch, qwen_vl_utils; print('ok', transformers.__version__, torch.__version__)"
