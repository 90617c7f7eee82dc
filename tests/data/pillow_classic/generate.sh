#!/usr/bin/env bash
# Reference resizes from Pillow 12.3.0, the last release that always resamples horizontally first
# (Pillow 13 reorders the passes: python-pillow/Pillow#9549). Own virtualenv, never the project's .venv.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${PILLOW_CLASSIC_VENV:-/work/venvs/pillow-12.3}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q Pillow==12.3.0 "numpy<3"
"$VENV/bin/python" "$HERE/generate.py"
