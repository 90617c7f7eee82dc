#!/usr/bin/env bash
# The official HPSv3 package in its own virtualenv (never the project's .venv).
# hpsv3 1.0.0 pins transformers==4.45.2 and imports torchvision (hpsv3/dataset/utils.py), so torch 2.13.0 (which
# cannot sit beside a torchvision) is not usable: torch 2.14.1 + torchvision 0.29.1 instead.
# The package is installed with --no-deps: its requirements include deepspeed, diffusers, opencv, timm,
# qwen-vl-utils, which `hpsv3.inference` never imports. What inference imports (through hpsv3/train.py and
# hpsv3/model/qwen2vl_trainer.py) is installed explicitly: trl/peft/accelerate of the transformers-4.45 era,
# fire, omegaconf, pandas, matplotlib, tensorboard (torch.utils.tensorboard), rich (trl), datasets.
set -euo pipefail
VENV=${HPSV3_VENV:-/work/venvs/hpsv3}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q transformers==4.45.2 trl==0.11.4 peft==0.13.2 accelerate==1.0.1 datasets==3.0.1 \
    fire omegaconf pyyaml pandas matplotlib tensorboard rich safetensors requests pillow "numpy<2.3"
"$VENV/bin/pip" install -q --no-deps hpsv3==1.0.0
"$VENV/bin/python" -c "import hpsv3.inference, transformers, torch; print('hpsv3 ok', transformers.__version__, torch.__version__)"
