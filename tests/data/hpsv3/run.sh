#!/usr/bin/env bash
# Regenerate the hpsv3 fixture: make the official virtualenv (make_venv.sh) and run generate.py in it on the CPU.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${HPSV3_VENV:-/work/venvs/hpsv3}
bash "$HERE/make_venv.sh"
CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$VENV/bin/python" "$HERE/generate.py"
