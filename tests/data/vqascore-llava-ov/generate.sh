#!/usr/bin/env bash
# Ground truth for `vqascore` with LLaVA-OneVision: t2v-metrics 3.0 in its own virtualenv, at its pins where
# inference needs them (transformers 4.49.0, numpy 1.26.4, Pillow 10.0.0), installed with --no-deps; torch 2.13.0
# (CPU wheel from local disk). accelerate: the official loader passes device_map="auto". The original `llava`
# package of GitHub LLaVA-VL/LLaVA-NeXT is not on PyPI: $LLAVA_NEXT_SRC is a folder holding its `llava/` (e.g.
# `git --git-dir=<clone>/.git archive HEAD llava | tar -x -C DIR`, commit written to DIR/COMMIT).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VQASCORE_LLAVA_OV_VENV:-/work/venvs/vqascore-llava-ov}"
LLAVA_NEXT_SRC="${LLAVA_NEXT_SRC:-/work/venvs/llava-next-src}"
if [ ! -d "$LLAVA_NEXT_SRC/llava" ]; then echo "no llava/ under LLAVA_NEXT_SRC=$LLAVA_NEXT_SRC" >&2; exit 1; fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q transformers==4.49.0 numpy==1.26.4 Pillow==10.0.0 opencv-python-headless==4.10.0.84 \
      accelerate==1.4.0 einops
  "$VENV/bin/pip" install -q --no-deps t2v-metrics==3.0
fi
HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH="$LLAVA_NEXT_SRC" "$VENV/bin/python" "$HERE/generate.py"
