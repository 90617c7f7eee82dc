"""Shared test fixtures. Parity fixtures live in ../shared/fixtures (beside the repository)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PREFSCORE_SHARED", REPO.parent / "shared"))


def shared_fixture(name: str) -> Path:
    """Path of ../shared/fixtures/<name>; fails (never skips) with a clear message when absent."""
    path = SHARED / "fixtures" / name
    if not path.is_dir():
        pytest.fail(
            f"parity fixture {path} is missing: these tests need the shared fixtures checked out beside the "
            f"repository (../shared), or PREFSCORE_SHARED pointing at that folder",
            pytrace=False,
        )
    return path


def parity_tol(ref: float) -> float:
    """The fixtures' parity tolerance against an official reference value: ``1e-4 * max(1, |ref|)``."""
    return 1e-4 * max(1.0, abs(ref))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never touch the network: the hub is unreachable here and must be in CI too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture()
def single_thread():
    """Tiny models run faster on one thread (and the CI machine is shared); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Two prefscore computations of one score that differ only in batch composition, axis set or thread count
# are different float32 computations: BLAS/oneDNN pick kernels by CPU (AVX2, AVX-512) and thread count, so
# sums are reordered and the last bits move (seen: 5.2e-6 on a 0.83 score on an AVX-512 Xeon). Such paths
# must agree within 1e-5 * max(1, |score|), ten times inside the parity tolerance. Exact equality is asserted
# only for the same tensors through the same call.
PATH_TOLERANCE = 1e-5


def assert_close_paths(got, want, scale: float = PATH_TOLERANCE) -> None:
    """``got`` and ``want`` are the same scores computed along two paths (see PATH_TOLERANCE)."""
    import numpy as np

    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    bound = scale * np.maximum(1.0, np.abs(want))
    gap = np.abs(got - want)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.all(gap[~np.isnan(want)] <= bound[~np.isnan(want)]), (
        f"paths differ by up to {np.nanmax(gap):.3g} (bound {scale:g} * max(1, |score|)):\n{got}\n{want}"
    )
