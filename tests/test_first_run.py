"""What a new user meets first: ``python -m prefscore``, OpenAI's TorchScript checkpoints, ``prefscore metrics`` at 80 columns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import torch
from torch import nn

import prefscore
from prefscore.backbones.clip import read_state_dict
from prefscore.registry import list_metrics

from conftest import REPO, read_jsonl, shared_fixture


def _run(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS=str(columns), PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "prefscore", *args], capture_output=True, text=True, env=env, timeout=300)


def test_python_dash_m_runs_the_cli():
    out = _run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"prefscore {prefscore.__version__}"


def test_metrics_reads_at_80_columns():
    out = _run("metrics", columns=80)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    blocks = [b.splitlines() for b in out.stdout.strip().split("\n\n")]
    assert [b[0] for b in blocks] == [spec.name for spec in list_metrics()]  # one block per metric
    for block in blocks:  # every field there, each on its own indented line
        starts = [line[:4] for line in block[1:] if not line.startswith("      ")]
        assert starts == ["  im", "  we", "  li", "  + ", "  - "], block
    wide = _run("metrics", columns=200)
    assert "┃ name" in wide.stdout and "strength / caveat" in wide.stdout  # the table where it fits


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """Write ``state`` as OpenAI ships CLIP: a TorchScript archive whose state_dict has these names."""
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's own deprecation notice (test set-up only)
        torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_checkpoint_loads_silently_and_scores_the_same(tmp_path):
    laion = shared_fixture("laion-aesthetic")
    plain = laion / "model" / "clip.pt"
    state = read_state_dict(plain)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _torchscript_archive(state, model_dir / "clip.pt")
    shutil.copy(laion / "model" / "aesthetic-mlp.pth", model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "received a zip file that looks like a TorchScript archive", no deprecation
        loaded = read_state_dict(model_dir / "clip.pt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    cases = read_jsonl(laion / "cases.jsonl")
    images = [laion / c["image"] for c in cases]
    from_script = prefscore.load("laion-aesthetic", model=model_dir).score(images, batch_size=4)
    from_plain = prefscore.load("laion-aesthetic", model=laion / "model").score(images, batch_size=4)
    np.testing.assert_array_equal(from_script, from_plain)  # the same tensors through the same calls
