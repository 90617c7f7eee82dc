#!/usr/bin/env bash
# Ground truth for `vqascore` on Qwen2-VL / Qwen2.5-VL: t2v-metrics 3.0 in its own virtualenv (make_venv.sh), on the CPU.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${VQASCORE_QWEN_VENV:-/work/venvs/vqascore-qwen}
bash "$HERE/make_venv.sh"
CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 "$VENV/bin/python" "$HERE/generate.py"
