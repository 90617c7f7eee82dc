"""LoRA adapters (peft) on a diffusers UNet: add, save, load.

Only the adapter weights train; the UNet, VAE and text encoder stay frozen. Checkpoints store the
peft state dict (``lora.safetensors``); :func:`export_lora` writes the diffusers LoRA format
(``pytorch_lora_weights.safetensors``) that ``pipeline.load_lora_weights(folder)`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_FILE = "lora.safetensors"


@dataclass
class LoraSettings:
    """``rank`` and ``alpha`` of the adapters (scale ``alpha / rank``), on the UNet modules named by
    ``targets`` (default: every attention projection)."""

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    dropout: float = 0.0


def add_lora(unet, settings: LoraSettings) -> list[torch.nn.Parameter]:
    """Freeze ``unet``, add the adapter, return its trainable parameters (float32)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        init_lora_weights="gaussian", target_modules=list(settings.targets))
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no UNet module matches the LoRA targets {settings.targets}")
    for p in params:
        p.data = p.data.float()
    return params


def lora_state(unet) -> dict[str, torch.Tensor]:
    """The adapter weights (peft key names), detached copies on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(unet, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(directory) / ADAPTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in lora_state(unet).items()}, str(path))
    return path


def load_lora(unet, directory: str | Path) -> None:
    """Load adapter weights saved by :func:`save_lora` into ``unet`` (which already has the adapter)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LoRA adapter weights here")
    result = set_peft_model_state_dict(unet, load_file(str(path)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{path}: adapter tensors {unexpected[:5]} do not fit this UNet's adapter")


def export_lora(pipeline, directory: str | Path) -> Path:
    """Write the UNet adapter in diffusers' LoRA format (``pipeline.load_lora_weights(directory)``)."""
    from peft.utils import get_peft_model_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layers = get_peft_model_state_dict(pipeline.unet)  # peft key names (lora_A / lora_B), read by diffusers as is
    config = pipeline.unet.peft_config["default"].to_dict()  # rank, alpha, targets: loads with the right scale
    type(pipeline).save_lora_weights(str(directory), unet_lora_layers=layers, safe_serialization=True,
                                     unet_lora_adapter_metadata=config)
    return directory
