"""OpenAI CLIP's ResNet image tower (``ModifiedResNet``), loaded from OpenAI/open_clip state dicts.

The tower (Radford et al. 2021, section 2.4) differs from torchvision's ResNet in three places:

* a 3-convolution stem (3x3 stride 2, 3x3, 3x3, each with BatchNorm + ReLU) followed by a 2x2
  average pool instead of one 7x7 convolution and a max pool;
* anti-aliased striding: a block with stride 2 average-pools after its 3x3 convolution (and before
  the 1x1 convolution of its shortcut) instead of striding a convolution;
* attention pooling: the final feature map is flattened into tokens, their mean is prepended as a
  query token, (optionally) a learned positional embedding is added, and one multi-head attention
  step of the query token over all tokens (q/k/v projections, output projection ``c_proj``)
  gives the image feature.

``pos_embedding=False`` skips the positional embedding, so any input size works; that is how
CLIP-IQA (IceClear/CLIP-IQA, pyiqa, piq/torchmetrics) scores images at full resolution. With
``pos_embedding=True`` (OpenAI's own forward) the input must have the training resolution's grid.

State-dict keys are OpenAI's (``visual.conv1.weight``, ``visual.layer1.0.downsample.0.weight``,
``visual.attnpool.q_proj.weight``, ...), which open_clip keeps. Every size is read off the tensors;
the head count is OpenAI's ``width * 32 // 64``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .clip import check_fit

EXPANSION = 4  # Bottleneck output channels = planes * 4


@dataclass(frozen=True)
class ResNetConfig:
    """Sizes of a ``ModifiedResNet``.

    ``layers``: Bottleneck blocks per stage (RN50: 3, 4, 6, 3). ``width``: stem output channels
    (RN50: 64); stage ``i`` has ``width * 2**i`` planes and the final feature map ``width * 32``
    channels (``embed_dim``). ``heads``: attention-pool heads. ``output_dim``: image feature size
    (RN50: 1024). ``image_size``: training resolution in pixels (grid of the positional
    embedding times 32; RN50: 224).
    """

    layers: tuple[int, int, int, int]
    width: int
    heads: int
    output_dim: int
    image_size: int

    @property
    def embed_dim(self) -> int:
        return self.width * 32

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str, prefix: str = "visual.") -> "ResNetConfig":
        """Read the sizes off an OpenAI/open_clip RN state dict (keys under ``prefix``)."""

        def need(key: str) -> torch.Tensor:
            if prefix + key not in sd:
                raise CheckpointError(
                    f"{source}: tensor '{prefix}{key}' is missing; this is not an OpenAI/open_clip ResNet CLIP checkpoint"
                )
            return sd[prefix + key]

        layers = []
        for stage in range(1, 5):
            pat = re.compile(re.escape(f"{prefix}layer{stage}.") + r"(\d+)\.")
            ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
            if not ids or ids != set(range(max(ids) + 1)):
                raise CheckpointError(
                    f"{source}: stage '{prefix}layer{stage}' has blocks {sorted(ids)}; expected blocks 0..n-1"
                )
            layers.append(len(ids))
        width = need("layer1.0.conv1.weight").shape[0]
        n_pos = need("attnpool.positional_embedding").shape[0]
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise CheckpointError(f"{source}: '{prefix}attnpool.positional_embedding' has {n_pos} rows, not a square grid + 1")
        embed_dim = width * 32
        heads = embed_dim // 64
        if heads < 1 or embed_dim % heads:
            raise CheckpointError(f"{source}: attention-pool width {embed_dim} is not divisible into {heads} heads")
        return cls(
            layers=tuple(layers),  # type: ignore[arg-type]
            width=width,
            heads=heads,
            output_dim=need("attnpool.c_proj.weight").shape[0],
            image_size=grid * 32,
        )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg-pool if strided) -> 1x1 (x4 channels), with a pooled 1x1 shortcut when needed."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.downsample = None
        if stride > 1 or inplanes != planes * EXPANSION:
            # keys "downsample.0" (conv) and "downsample.1" (BN), as in OpenAI's checkpoints
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity())
            self.downsample.add_module("0", nn.Conv2d(inplanes, planes * EXPANSION, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(planes * EXPANSION))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Mean token as query, one multi-head attention step over ``[mean, spatial tokens]``."""

    def __init__(self, n_positions: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(n_positions, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor, pos_embedding: bool = True) -> torch.Tensor:
        """``x``: feature map ``(N, C, H, W)`` -> pooled feature ``(N, output_dim)``."""
        n, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)  # (N, HW+1, C)
        if pos_embedding:
            if tokens.shape[1] != self.positional_embedding.shape[0]:
                grid = round((self.positional_embedding.shape[0] - 1) ** 0.5)
                raise ValueError(
                    f"positional embedding is for a {grid}x{grid} feature map, got {x.shape[2]}x{x.shape[3]}: "
                    f"feed images of the training resolution ({grid * 32} px) or use pos_embedding=False"
                )
            tokens = tokens + self.positional_embedding.to(tokens.dtype)
        head_dim = c // self.heads
        q = self.q_proj(tokens[:, :1]).view(n, 1, self.heads, head_dim).transpose(1, 2)
        k = self.k_proj(tokens).view(n, -1, self.heads, head_dim).transpose(1, 2)
        v = self.v_proj(tokens).view(n, -1, self.heads, head_dim).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (N, heads, 1, head_dim)
        return self.c_proj(pooled.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """OpenAI CLIP's ResNet image tower; ``forward`` returns un-normalised image features."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.conv1 = nn.Conv2d(3, w // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.conv2 = nn.Conv2d(w // 2, w // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.conv3 = nn.Conv2d(w // 2, w, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = w
        for stage, blocks in enumerate(config.layers):
            planes = w * 2**stage
            stride = 1 if stage == 0 else 2
            layer = [Bottleneck(inplanes, planes, stride)] + [Bottleneck(planes * EXPANSION, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
            inplanes = planes * EXPANSION
        grid = config.image_size // 32
        self.attnpool = AttentionPool2d(grid * grid + 1, config.embed_dim, config.heads, config.output_dim)

    @staticmethod
    def feature_size(pixels: int) -> int:
        """Side of the final feature map for an input side of ``pixels`` (stride-2 conv, then 4 halvings)."""
        size = (pixels + 1) // 2  # 3x3 conv, stride 2, padding 1
        for _ in range(4):  # stem average pool, then the pools of stages 2-4
            size //= 2
        return size

    def forward(self, x: torch.Tensor, pos_embedding: bool = True) -> torch.Tensor:
        """``x``: normalised images ``(N, 3, H, W)`` -> features ``(N, output_dim)``.

        ``pos_embedding=False`` (CLIP-IQA) takes any H, W with at least one feature-map cell
        (``feature_size(side) >= 1``, i.e. sides of 31 px or more).
        """
        x = x.to(self.conv1.weight.dtype)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x, pos_embedding=pos_embedding)


def resnet_from_state_dict(sd: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype = torch.float32,
                           prefix: str = "visual.") -> ModifiedResNet:
    """Build a :class:`ModifiedResNet` from the ``prefix`` tensors of ``sd`` (sizes read off them).

    Every parameter and BatchNorm statistic must be present with the right shape
    (:class:`CheckpointError` names the first misfit tensor); ``num_batches_tracked`` is optional.
    """
    config = ResNetConfig.from_state_dict(sd, source, prefix)
    with torch.device("meta"):
        model = ModifiedResNet(config)
    expected = model.state_dict()
    state = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    check_fit(expected, state, source, optional=optional, key_name=lambda k: prefix + k, what="the ResNet tower")
    loaded = {k: (v if k in optional else v.to(dtype)) for k, v in state.items()}
    for k in optional - set(loaded):
        loaded[k] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(loaded, strict=True, assign=True)
    return model.eval()
