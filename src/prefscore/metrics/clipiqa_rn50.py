"""The original CLIP-IQA backbone: OpenAI CLIP RN50 without the attention-pool positional embedding.

This is what IceClear/CLIP-IQA (``CLIPIQAFixed(backbone_name='RN50', pos_embedding=False)``), pyiqa's
``clipiqa`` and piq/torchmetrics' default ``"clip_iqa"`` model compute:

* images: Pillow ``convert("RGB")``, ``/255``, OpenAI mean/std, **no resize** (full resolution);
* image tower: :class:`~prefscore.backbones.resnet.ModifiedResNet` with ``pos_embedding=False``
  (spatial tokens + their mean as query, no positional embedding, attention pooling);
* text tower: the CLIP text transformer (QuickGELU, ``width // 64`` heads) on token ids from the
  HF CLIP tokenizer, zero-padded to the context length (77), pooled at the highest token id
  (``<|endoftext|>``), as OpenAI's ``encode_text`` on piq's model.

The 100 * cos / softmax arithmetic is in :class:`prefscore.metrics.clipiqa.ClipIQA`.

Checkpoint sources: a local directory with ``open_clip_model.safetensors``,
``open_clip_pytorch_model.bin`` or OpenAI's ``RN50.pt`` (TorchScript archive or plain state dict),
or a hub repo holding one of them; the default is the open_clip mirror of OpenAI's weights,
``timm/resnet50_clip.openai``. The tokenizer comes from the same directory/repo when it holds
the HF tokenizer files, else from ``openai/clip-vit-base-patch16`` (what torchmetrics uses).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import hub
from ..backbones.clip import OPENAI_ARCH, convert_text, load_into, read_state_dict, text_config_from_state_dict
from ..backbones.loading import TOKENIZER_FILES, load_hf_tokenizer
from ..backbones.resnet import ModifiedResNet, resnet_from_state_dict
from ..differentiable import unresized_tensor
from ..errors import CheckpointError, ImageError, ModelSourceError, PromptError
from ..images import to_rgb
from ..preprocess import OPENAI_MEAN, OPENAI_STD, normalize, to_tensor

DEFAULT_SOURCE = "timm/resnet50_clip.openai"
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "RN50.pt")
TOKENIZER_SOURCE = "openai/clip-vit-base-patch16"


def _has_tokenizer(directory: Path) -> bool:
    return any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json"))


def tokenizer_dir(source: str) -> Path:
    """The model's own HF tokenizer files when it has them, else ``openai/clip-vit-base-patch16``'s."""
    try:
        directory = hub.local_dir(source, TOKENIZER_FILES, what="CLIP tokenizer")
    except ModelSourceError:
        directory = None
    if directory is not None and _has_tokenizer(directory):
        return directory
    return hub.local_dir(TOKENIZER_SOURCE, TOKENIZER_FILES, what="CLIP tokenizer")


def text_tower_from_state_dict(sd, source: str, dtype: torch.dtype):
    """A transformers ``CLIPTextModelWithProjection`` holding the CLIP text tower of ``sd``."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(**text_config_from_state_dict(sd, OPENAI_ARCH, source))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    return load_into(model, convert_text(sd, config.num_hidden_layers), source, dtype)


class RN50Backbone:
    """OpenAI CLIP RN50 for CLIP-IQA: full-resolution images, no positional embedding.

    ``source``: a local directory or hub repo id with an RN50-format checkpoint (see the module
    docstring); None means ``timm/resnet50_clip.openai``. Any ``ModifiedResNet`` CLIP checkpoint
    works (sizes are read off the tensors), e.g. RN101 or a tiny test model.
    """

    def __init__(self, source: str | None, dtype: torch.dtype, device: torch.device):
        source = DEFAULT_SOURCE if source is None else str(source)
        self.device = device
        path = hub.find_file(source, CHECKPOINT_NAMES, what="OpenAI RN50 CLIP checkpoint")
        sd = read_state_dict(path)
        self.visual: ModifiedResNet = resnet_from_state_dict(sd, str(path), dtype).to(device)
        self.text = text_tower_from_state_dict(sd, str(path), dtype).to(device)
        text_dim = self.text.config.projection_dim
        if text_dim != self.visual.config.output_dim:
            raise CheckpointError(
                f"{path}: 'text_projection' projects to {text_dim} but 'visual.attnpool.c_proj' to {self.visual.config.output_dim}"
            )
        self.context_length = int(self.text.config.max_position_embeddings)
        self.tokenizer = load_hf_tokenizer(tokenizer_dir(source))
        self.min_side = next(s for s in range(1, 1024) if ModifiedResNet.feature_size(s) >= 1)

    def preprocess(self, image, name: str) -> torch.Tensor:
        """PIL image -> ``(3, H, W)`` float32 at the image's own size: RGB, ``/255``, OpenAI mean/std."""
        rgb = to_rgb(image, name)
        if min(rgb.size) < self.min_side:
            raise ImageError(
                name, f"image is {rgb.width}x{rgb.height}; the RN50 tower needs at least {self.min_side} px per side"
            )
        return normalize(to_tensor(rgb), OPENAI_MEAN, OPENAI_STD)

    def preprocess_tensor(self, pixels: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Differentiable twin of :meth:`preprocess`: ``(B, 3, H, W)`` in [0, 1], full resolution."""
        return unresized_tensor(pixels, quantize=quantize, min_side=self.min_side)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` (one size per batch) -> un-normalised features ``(B, D)``."""
        return self.visual(pixels, pos_embedding=False)

    def token_ids(self, sentences: list[str]) -> torch.Tensor:
        """HF CLIP token ids (start and end tokens included), zero-padded to the context length."""
        encoded = self.tokenizer(list(sentences))["input_ids"]
        ids = torch.zeros(len(encoded), self.context_length, dtype=torch.long)
        for i, (sentence, tokens) in enumerate(zip(sentences, encoded)):
            if len(tokens) > self.context_length:
                raise PromptError(
                    f"prompt {sentence!r} is {len(tokens)} tokens long; the CLIP text tower takes at most {self.context_length}"
                )
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return ids

    def text_features(self, sentences: list[str]) -> torch.Tensor:
        """Un-normalised text features ``(len(sentences), D)``, pooled at the highest token id (end of text)."""
        ids = self.token_ids(sentences).to(self.device)
        hidden = self.text(input_ids=ids).last_hidden_state  # after the final LayerNorm
        pooled = hidden[torch.arange(len(ids), device=self.device), ids.argmax(dim=-1)]
        return self.text.text_projection(pooled)
