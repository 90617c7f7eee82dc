#!/usr/bin/env bash
# Regenerate tests/data/mps with the official Kwai-Kolors/MPS code in its own virtualenv.
#   bash tests/data/mps/generate.sh OFFICIAL_CHECKOUT [VENV]
# OFFICIAL_CHECKOUT: a checkout of github.com/Kwai-Kolors/MPS (commit be9027f; only trainer/models is imported).
# VENV (default /work/venvs/mps): created if missing with the official pin transformers==4.27.3 (requirements.txt;
# its other pins - accelerate, deepspeed, hydra, wandb, ... - are for training and not imported by inference),
# tokenizers 0.13.3 (what 4.27.3 accepts), einops (imported by cross_modeling.py, unpinned), and torch 2.13.0 CPU.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
official="$(cd "$1" && pwd)"
venv="${2:-/work/venvs/mps}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0 transformers==4.27.3 tokenizers==0.13.3 numpy==1.26.4 einops==0.8.2 Pillow==13.0.0
fi
cd "$here/../../.."
OMP_NUM_THREADS=1 "$venv/bin/python" tests/data/mps/generate.py "$official" "${PICKSCORE_TOKENIZER:-../shared/fixtures/pickscore/model}"
