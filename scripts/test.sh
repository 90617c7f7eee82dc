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
.venv/bin/python -m pytest -q "$@"
# Step 2: the numerics-sensitive files again on one thread with torch's portable (non-SIMD) kernels, the way
# another CPU or thread count computes them: tolerances must hold there too, not only on this machine's kernels.
if [ $# -eq 0 ]; then
  OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_parity.py tests/test_engine.py tests/test_imagereward.py tests/test_differentiable.py tests/test_clipiqa_rn50.py \
    tests/test_clipscore.py tests/test_api.py tests/test_qalign_official.py
fi
