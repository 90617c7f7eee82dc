#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# headless Chromium for the browser tests (annotation app, HTML report); Debian's package, no browser download
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "chromium is not installed: the browser tests will fail (apt-get install chromium)" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
