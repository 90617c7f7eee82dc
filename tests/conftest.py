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
