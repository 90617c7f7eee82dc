"""prefscore.memory: glibc's malloc thresholds raised once, so CPU activations are reused, not re-faulted."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"

# three 16 MiB tensors alive at once, then freed, as in a forward pass; page faults per cycle once warm
PROBE = """
import resource, torch
from prefscore.memory import settle_malloc_thresholds
settled = settle_malloc_thresholds()
def cycle():
    a = torch.ones(4 << 20); b = torch.ones(4 << 20); c = torch.ones(4 << 20)
    del a, b, c
for _ in range(2):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    cycle()
print(settled, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""
PAGES = 3 * (16 << 20) // 4096  # pages a cycle writes: 12288


def _probe(tuning: str) -> tuple[bool, int]:
    env = dict(os.environ, PYTHONPATH=str(SRC), PREFSCORE_MALLOC_TUNING=tuning, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    settled, faults = out.stdout.split()
    return settled == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_freed_activations_are_reused_without_page_faults():
    settled, faults = _probe("1")
    assert settled and faults < PAGES // 4  # measured 0 (once 1024 in 4 runs): the heap keeps the freed memory
    # PREFSCORE_MALLOC_TUNING=0 leaves glibc's own thresholds alone. How many pages are then faulted again depends
    # on what raised glibc's dynamic threshold before (measured 12256, 4088, 1024 in runs here), so it is not asserted.
    unsettled, _ = _probe("0")
    assert not unsettled
