#!/usr/bin/env bash
# Set up a fresh machine and run the main job: score images (arguments go to `prefscore score`).
#   bash scripts/score.sh IMAGES_OR_FOLDERS... --metric NAME [--model SRC] [--prompt TEXT] [-o out.csv]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/prefscore score "$@"
