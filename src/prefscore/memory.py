"""Process memory settings that change CPU inference speed, never its numbers.

glibc's ``malloc`` serves a request larger than its *mmap threshold* with a fresh ``mmap`` (returned
to the system on ``free``), and gives back heap memory above its *trim threshold*; memory taken
again from the system costs a page fault per 4 KiB page on first touch. Both thresholds start low
(128 KiB) and glibc raises them on its own the first time a block between the current threshold
and 32 MiB that came from ``mmap`` is freed (``mallopt(3)``, "dynamic mmap threshold"): to that
block's size, and the trim threshold to twice it.

A model loaded by transformers 4.x frees large temporary weight copies while loading, so its
process reaches high thresholds before the first forward. transformers 5 maps the checkpoint file
instead and frees nothing large, so the thresholds follow only the activations freed so far: a
SigLIP so400m forward on the CPU then keeps returning memory to the system and faulting it back
(tens of thousands of page faults per image, about 5 % of the forward time; see
benchmarks/RESULTS.md section 7). :func:`settle_malloc_thresholds` frees one 32 MiB ``mmap`` block,
which moves both thresholds where glibc would put them after any such free.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit systems: the highest the dynamic threshold goes.
MMAP_THRESHOLD_MAX = 32 << 20
_settled = False


def settle_malloc_thresholds() -> bool:
    """Raise glibc's dynamic mmap / trim thresholds to their maximum (32 / 64 MiB) once per process.

    Allocates and frees one block of just under 32 MiB (never touched: no page is written). Does
    nothing where the C library is not glibc, or when ``PREFSCORE_MALLOC_TUNING=0``. Returns True
    when the block was freed (now or by an earlier call).
    """
    global _settled
    if _settled:
        return True
    if os.environ.get("PREFSCORE_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.restype, libc.free.argtypes = None, [ctypes.c_void_p]
    except (OSError, AttributeError):
        return False
    block = libc.malloc(MMAP_THRESHOLD_MAX - (2 << 12))  # chunk (request + header, page-rounded) <= 32 MiB
    if not block:
        return False
    libc.free(block)
    _settled = True
    return True
