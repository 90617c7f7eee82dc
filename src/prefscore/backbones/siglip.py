"""SigLIP image towers on transformers' ``SiglipVisionModel``, loaded from the published HF layout.

A source is an HF SigLIP repository or a local directory with its files: ``config.json`` (a full
``SiglipModel`` config with ``vision_config``, as ``google/siglip-so400m-patch14-384``, or a
``siglip_vision_model`` config) and ``model.safetensors`` / ``pytorch_model.bin`` (whose
``vision_model.*`` tensors are read; a text tower beside them is ignored). The image features are
the ``pooler_output``: SigLIP's attention-pool head (a learned probe attending over the patch
tokens, then LayerNorm + MLP with a residual), before any projection or normalisation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .. import hub
from ..errors import CheckpointError, ModelSourceError

SIGLIP_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "preprocessor_config.json"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _dtype_keyword() -> str:
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # 4.x: torch_dtype


class SiglipTower(nn.Module):
    """A SigLIP vision tower: :meth:`image_features` is the attention-pooled ``pooler_output``.

    ``pixels`` are the processor's output ``(B, 3, S, S)`` (S = ``image_size``, 384 for so400m);
    features are ``(B, hidden_size)`` in the tower's dtype.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    #: On the CPU, images per tower call are capped so that the MLP's hidden activation and its GELU
    #: (alive together) fit in this many bytes: glibc serves larger blocks with a fresh ``mmap`` on every
    #: allocation, whose pages then fault one by one (so400m at 384 px: 12.5 MiB per image; at batch 4,
    #: 260k page faults and ~15 % slower per image than one image per call). See :mod:`prefscore.memory`.
    cpu_chunk_bytes: int = 32 << 20

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        step = len(pixels)
        if pixels.device.type == "cpu":
            cfg = self.model.config
            tokens = (pixels.shape[-2] // cfg.patch_size) * (pixels.shape[-1] // cfg.patch_size)
            hidden = 2 * tokens * cfg.intermediate_size * self.model.dtype.itemsize
            step = max(1, self.cpu_chunk_bytes // hidden)
        if step >= len(pixels):
            return self.model(pixel_values=pixels).pooler_output
        return torch.cat([self.model(pixel_values=chunk).pooler_output for chunk in pixels.split(step)])


def has_hf_siglip(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any((directory / f).is_file() for f in WEIGHT_FILES)


def siglip_directory(source: str | os.PathLike, what: str) -> Path:
    """A local directory with the SigLIP files of ``source`` (a directory, or a hub repo fetched/cached)."""
    if hub.is_local(source):
        root = Path(source).expanduser()
        if not has_hf_siglip(root):
            raise ModelSourceError(f"{root}: no {what} found: expected HF SigLIP files (config.json + model.safetensors)")
        return root
    return hub.local_dir(source, SIGLIP_FILES, what=what)


def _vision_config(directory: Path):
    from transformers import SiglipVisionConfig

    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / 'config.json'}: cannot read the config: {exc}") from None
    model_type = cfg.get("model_type")
    if model_type == "siglip":
        if "vision_config" not in cfg:
            raise CheckpointError(f"{directory / 'config.json'}: a 'siglip' config without 'vision_config'")
        cfg = dict(cfg["vision_config"])
    elif model_type != "siglip_vision_model":
        raise CheckpointError(
            f"{directory / 'config.json'}: model_type {model_type!r} is not a SigLIP model "
            "(expected 'siglip' or 'siglip_vision_model')"
        )
    cfg.pop("model_type", None)
    return SiglipVisionConfig(**cfg)


def load_siglip_tower(source: str | os.PathLike, dtype: torch.dtype, what: str = "SigLIP vision tower") -> SiglipTower:
    """The vision tower of a SigLIP checkpoint (see the module docstring), in ``dtype``, eval mode.

    A checkpoint that lacks a vision tensor, or whose tensors do not fit its config, fails with
    :class:`CheckpointError` naming the tensor (transformers would initialise it randomly).
    """
    from transformers import SiglipVisionModel

    from transformers.utils import logging as hf_logging

    dtype_kw = _dtype_keyword()
    directory = siglip_directory(source, what)
    config = _vision_config(directory)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the text tower's tensors are "unexpected" by design; checked below instead
    try:
        model, info = SiglipVisionModel.from_pretrained(str(directory), config=config, **{dtype_kw: dtype},
                                                        output_loading_info=True, ignore_mismatched_sizes=True)
    except (RuntimeError, ValueError, OSError) as exc:  # unreadable files
        raise CheckpointError(f"{directory}: cannot load the {what}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if info.get("mismatched_keys"):  # (name, checkpoint shape, model shape)
        name, found, expected = sorted(info["mismatched_keys"], key=str)[0]
        raise CheckpointError(
            f"{directory}: {what} tensor '{name}' has shape {tuple(found)} but its config.json expects "
            f"{tuple(expected)} ({len(info['mismatched_keys'])} tensor(s) do not fit)"
        )
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{directory}: the {what} checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
    return SiglipTower(model.eval().requires_grad_(False))
