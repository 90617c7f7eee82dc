#!/usr/bin/env bash
# Set up a fresh machine and run the main job: score images (arguments go to `prefscore score`).
#   bash scripts/score.sh IMAGES_OR_FOLDERS... --metric NAME [--model SRC] [--prompt TEXT] [-o out.csv]
# Paths are taken relative to the folder you run it from. Exit status as `prefscore score`: 0 every row
# scored, 3 finished with error rows, 2 bad arguments or inputs.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/setup.sh" >&2
exec "$repo/.venv/bin/prefscore" score "$@"
