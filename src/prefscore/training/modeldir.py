"""The trained-model directory: what ``prefscore train`` writes and ``prefscore.load(<dir>)`` reads.

Layout::

    prefscore.json        # {"metric": "custom", "format": 1, "kind": "head" | "finetune", ...}
    head.safetensors      # kind "head": the ScoreHead (standardisation buffers + layers)
    backbone/             # kind "finetune": the fine-tuned CLIP in HF format + tokenizer + processor
    README.md             # model card (data, split, validation accuracy with CI, limitations)
    training_curve.png    # loss and validation accuracy per epoch / step
    history.json          # the numbers behind the curve
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..hub import read_json
from ..registry import MODEL_CARD_FILE
from .report import model_card, plot_curve

FORMAT = 1
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"


def _clean(obj):
    """JSON-safe: NaN -> None, tuples -> lists, paths -> str."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_model_dir(out: Path, meta: dict, history: list[dict], head: torch.nn.Module | None = None) -> Path:
    """Write ``prefscore.json``, the head (if any), ``history.json``, the curve and the card into ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    meta = _clean({"metric": "custom", "format": FORMAT, **meta})
    if head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / HEAD_FILE))
    (out / "history.json").write_text(json.dumps(_clean(history), indent=1))
    if history:
        plot_curve(history, out / "training_curve.png", x_key="epoch" if "epoch" in history[0] else "step")
    (out / MODEL_CARD_FILE).write_text(json.dumps(meta, indent=2))
    (out / "README.md").write_text(model_card(meta))
    return out


def read_meta(root: str | Path) -> dict:
    """The ``prefscore.json`` of a trained model directory, checked for the fields scoring needs."""
    root = Path(root).expanduser()
    card = root / MODEL_CARD_FILE
    if not card.is_file():
        raise CheckpointError(f"{root}: no {MODEL_CARD_FILE}; not a model directory written by `prefscore train`")
    meta = read_json(card, "model description")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{card}: unsupported model format {meta.get('format')!r} (this prefscore reads format {FORMAT})")
    for key in ("kind", "objective", "prompt_aware", "backbone", "temperature"):
        if key not in meta:
            raise CheckpointError(f"{card}: key {key!r} is missing")
    if meta["kind"] not in ("head", "finetune"):
        raise CheckpointError(f"{card}: unknown model kind {meta['kind']!r}")
    return meta
