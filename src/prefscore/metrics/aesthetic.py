"""Aesthetic predictors: LAION's heads on L2-normalised OpenAI CLIP ViT-L/14 image features, and
Aesthetic Predictor V2.5's head on L2-normalised SigLIP so400m features.

Model directory layout (the fixture's, and what a user with local files provides):
``clip.pt`` / ``ViT-L-14.pt`` (OpenAI format) or HF CLIP files, plus the head file
(``sac+logos+ava1-l14-linearMSE.pth`` or ``aesthetic-mlp.pth`` for v2; ``sa_0_4_vit_l_14_linear.pth``
or ``aesthetic-linear.pth`` for v1). Preprocessing is OpenAI CLIP's ``_transform`` (the official
scripts use ``clip.load``), also when the backbone comes in HF format.

V2.5 (``laion-aesthetic-v2.5``): the HF files of ``google/siglip-so400m-patch14-384``
(``config.json``, ``model.safetensors``, ``preprocessor_config.json``) plus
``aesthetic_predictor_v2_5.pth`` (the state dict of the package's ``scoring_head``). Its code and
weights are AGPL-3.0; this module is written from the architecture, not from that code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import differentiable, hub, preprocess
from ..backbones.clip import OPENAI_ARCH, read_state_dict
from ..backbones.loading import fetch_url, has_hf_clip, load_clip_tower, load_processor_config
from ..base import HFProcessorInput, Metric
from ..errors import CheckpointError

OPENAI_CLIP_FILES = ("ViT-L-14.pt", "clip.pt", "model.pt")
DEFAULT_BACKBONE = "openai/clip-vit-large-patch14"
V2_HEAD_REPO = "camenduru/improved-aesthetic-predictor"
V2_HEADS = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic-mlp.pth", "ava+logos-l14-linearMSE.pth")
V1_HEAD_URL = "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth"
V1_HEADS = ("sa_0_4_vit_l_14_linear.pth", "aesthetic-linear.pth")


class AestheticMLP(nn.Sequential):
    """The v2 head: Linear(d,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16)
    Linear(16,1), no activations (as in simple_inference.py; state-dict keys ``layers.N``)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def build_head(sd: dict, kind: str, embed_dim: int, source: str) -> nn.Module:
    if kind == "mlp":
        sd = _strip(sd, "layers.")
        first = sd.get("0.weight")
        if first is None:
            raise CheckpointError(f"{source}: tensor 'layers.0.weight' is missing; not an improved-aesthetic-predictor head")
        head = AestheticMLP(first.shape[1])
    else:
        first = sd.get("weight")
        if first is None:
            raise CheckpointError(f"{source}: tensor 'weight' is missing; not a linear aesthetic head")
        head = nn.Linear(first.shape[1], 1)
    if first.shape[1] != embed_dim:
        name = "layers.0.weight" if kind == "mlp" else "weight"
        raise CheckpointError(
            f"{source}: head tensor '{name}' has shape {tuple(first.shape)}: it expects {first.shape[1]}-d features "
            f"but the CLIP backbone gives {embed_dim}-d"
        )
    expected = head.state_dict()
    for k, v in sd.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{source}: head tensor '{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    missing, unexpected = head.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: head does not fit: missing {missing}, unexpected {unexpected}")
    return head.eval().requires_grad_(False)


class LaionAesthetic(Metric):
    """Aesthetic score (about 1-10, higher is better) from the v2 MLP head."""

    kind = "mlp"
    head_names = V2_HEADS

    def __init__(self, spec, source: str, device="cpu", dtype="float32", head: str | None = None, backbone: str | None = None):
        super().__init__(device, dtype)
        self.spec = spec
        if source == spec.default_model:
            backbone_src, head_path = backbone or DEFAULT_BACKBONE, self._default_head()
        else:
            root = Path(source).expanduser()
            if not root.is_dir():
                raise CheckpointError(
                    f"{source}: the model of '{spec.name}' is a local directory holding the CLIP backbone and the head file"
                )
            names = (head,) if head else self.head_names
            head_path = hub.find_file(root, names, what=f"{spec.name} head")
            has_backbone = has_hf_clip(root) or any((root / n).is_file() for n in OPENAI_CLIP_FILES)
            backbone_src = backbone or (str(root) if has_backbone else DEFAULT_BACKBONE)
        self.clip = load_clip_tower(backbone_src, OPENAI_ARCH, self.dtype, OPENAI_CLIP_FILES, what="CLIP ViT-L/14 backbone")
        embed_dim = self.clip.model.config.projection_dim
        self.head = build_head(read_state_dict(head_path), self.kind, embed_dim, str(head_path))
        self.clip.to(self.device)
        self.head.to(self.device)
        self.image_size = self.clip.image_size

    def _default_head(self) -> Path:
        return hub.find_file(V2_HEAD_REPO, [V2_HEADS[0]], what="improved aesthetic predictor head")

    def preprocess(self, image, name):
        return preprocess.openai_clip(image, self.image_size, name=name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        return differentiable.openai_clip_tensor(pixels, self.image_size, quantize=quantize)

    def preprocess_key(self):
        return ("openai_clip", self.image_size)

    def image_tower(self):
        return self, "clip"

    def forward(self, pixels, prompts=None):
        feats = self.clip.image_features(pixels).float()
        norm = feats.norm(dim=-1, keepdim=True)
        feats = feats / torch.where(norm == 0, torch.ones_like(norm), norm)  # zero norm guarded as in the script
        return self.head(feats)[:, 0]


class LaionAestheticV1(LaionAesthetic):
    """Aesthetic score (about 1-10) from the v1 linear head."""

    kind = "linear"
    head_names = V1_HEADS

    def _default_head(self) -> Path:
        return fetch_url(V1_HEAD_URL, "LAION aesthetic v1 head")


# -- Aesthetic Predictor V2.5 (discus0434/aesthetic-predictor-v2-5): SigLIP so400m + MLP head -------------

V25_BACKBONE = "google/siglip-so400m-patch14-384"
V25_HEAD_URL = "https://github.com/discus0434/aesthetic-predictor-v2-5/raw/main/models/aesthetic_predictor_v2_5.pth"
V25_HEADS = ("aesthetic_predictor_v2_5.pth",)


class AestheticV25Head(nn.Module):
    """The V2.5 head: Linear(d,1024) Dropout(.5) Linear(1024,128) Dropout(.5) Linear(128,64) Dropout(.5)
    Linear(64,16) Dropout(.2) Linear(16,1), no activations; state-dict keys ``scoring_head.N``."""

    def __init__(self, dim: int):
        super().__init__()
        self.scoring_head = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.5), nn.Linear(1024, 128), nn.Dropout(0.5), nn.Linear(128, 64),
            nn.Dropout(0.5), nn.Linear(64, 16), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scoring_head(feats)


def build_v25_head(sd: dict, embed_dim: int, source: str) -> AestheticV25Head:
    first = sd.get("scoring_head.0.weight")
    if first is None:
        raise CheckpointError(f"{source}: tensor 'scoring_head.0.weight' is missing; not an Aesthetic Predictor V2.5 head")
    if first.shape[1] != embed_dim:
        raise CheckpointError(
            f"{source}: head tensor 'scoring_head.0.weight' has shape {tuple(first.shape)}: it expects "
            f"{first.shape[1]}-d features but the SigLIP backbone gives {embed_dim}-d"
        )
    head = AestheticV25Head(embed_dim)
    expected = head.state_dict()
    for k, v in sd.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{source}: head tensor '{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    missing, unexpected = head.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: head does not fit: missing {missing}, unexpected {unexpected}")
    return head.eval().requires_grad_(False)


class AestheticV25(HFProcessorInput, Metric):
    """Aesthetic Predictor V2.5 (about 1-10, higher is better; 5.5+ is 'great' by its README).

    ``head(f / |f|)`` with ``f`` the ``pooler_output`` of SigLIP so400m-patch14-384 and the MLP head
    of ``aesthetic_predictor_v2_5.pth``. Images: ``convert("RGB")`` (as the official README does) and
    transformers 4.x ``SiglipImageProcessor`` (squashed to 384x384, bicubic, mean = std = 0.5).
    The tower runs in ``dtype``; the normalisation and the head always run in float32.
    """

    default_batch_size = 8

    def __init__(self, spec, source: str, device="cpu", dtype="float32", head: str | None = None, backbone: str | None = None):
        super().__init__(device, dtype)
        from ..backbones.siglip import has_hf_siglip, load_siglip_tower, siglip_directory

        self.spec = spec
        if source == spec.default_model:
            backbone_src = backbone or V25_BACKBONE
            head_path = fetch_url(V25_HEAD_URL, "Aesthetic Predictor V2.5 head")  # where the official package gets it
        else:
            root = Path(source).expanduser()
            if not root.is_dir():
                raise CheckpointError(
                    f"{source}: the model of '{spec.name}' is a local directory holding the SigLIP files and "
                    f"{V25_HEADS[0]}"
                )
            head_path = hub.find_file(root, (head,) if head else V25_HEADS, what=f"{spec.name} head")
            backbone_src = backbone or (str(root) if has_hf_siglip(root) else V25_BACKBONE)
        what = "SigLIP so400m backbone"
        directory = siglip_directory(backbone_src, what)
        self.siglip = load_siglip_tower(directory, self.dtype, what=what)
        self.processor = load_processor_config(directory)
        self.head = build_v25_head(read_state_dict(head_path), self.siglip.hidden_size, str(head_path))
        self.siglip.to(self.device)
        self.head.to(self.device)

    def image_tower(self):
        return self, "siglip"

    def forward(self, pixels, prompts=None):
        feats = self.siglip.image_features(pixels).float()
        return self.head(feats / feats.norm(dim=-1, keepdim=True))[:, 0]  # no zero-norm guard, as the official model
