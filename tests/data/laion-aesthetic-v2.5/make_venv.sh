#!/usr/bin/env bash
# Build the reference environment for generate.py: the official aesthetic-predictor-v2-5 package
# beside the transformers release current when it was published (2024-12-18), on CPU torch.
#
#   bash tests/data/laion-aesthetic-v2.5/make_venv.sh [VENV]      # default /work/venvs/aes25
#   VENV/bin/python tests/data/laion-aesthetic-v2.5/generate.py
#
# The package declares accelerate>=0.30, numpy, torch>=2.2, torchvision>=0.17, transformers>=4.40.
# It never imports torchvision, and on transformers 4.47 the SiglipImageProcessor class it
# subclasses is the PIL/numpy one, so torchvision is left out (it does not install beside the
# CPU torch 2.13.0 used here); every other requirement is installed at the versions below, Pillow
# (unpinned by the package) at the release current when it was published: 11.0.0. Pillow 13 runs the vertical
# resize pass first for some shapes (python-pillow/Pillow#9549); prefscore keeps the classic order of every
# earlier Pillow (prefscore.preprocess.resize), which is what the package computed when it was released.
set -euo pipefail
VENV="${1:-/work/venvs/aes25}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "transformers==4.47.1" "accelerate==1.2.1" "numpy<2.3" "Pillow==11.0.0" "safetensors" "huggingface_hub<1"
"$VENV/bin/pip" install -q --no-deps "aesthetic-predictor-v2-5==2024.12.18.1"
"$VENV/bin/python" -c "import aesthetic_predictor_v2_5, transformers, torch, PIL; print('ok', transformers.__version__, torch.__version__, PIL.__version__)"
