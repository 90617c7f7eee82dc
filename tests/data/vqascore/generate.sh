#!/usr/bin/env bash
# Ground truth for `vqascore`: t2v-metrics 3.0 in its own virtualenv, at its pins where inference needs them.
# t2v-metrics 3.0 declares ~70 dependencies (torch 2.5.1, torchvision, xformers, apex, deepspeed, LAVIS deps, ...);
# its CLIP-FlanT5 scorer needs only transformers (pinned 4.49.0), numpy (1.26.4), Pillow (10.0.0), sentencepiece,
# protobuf and cv2 (imported by mm_utils), so it is installed with --no-deps plus those. torch is 2.13.0 (CPU wheel
# from local disk): the official CLIP-T5 code runs on it unchanged.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${VQASCORE_VENV:-/work/venvs/vqascore}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q transformers==4.49.0 numpy==1.26.4 Pillow==10.0.0 sentencepiece protobuf \
      opencv-python-headless==4.10.0.84
  "$VENV/bin/pip" install -q --no-deps t2v-metrics==3.0
fi
OMP_NUM_THREADS=1 "$VENV/bin/python" "$HERE/generate.py"
