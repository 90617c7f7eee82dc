"""Scoring heads on frozen features: standardisation, then a linear map or a small MLP."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import CheckpointError

HEAD_KINDS = ("linear", "mlp")


@dataclass
class HeadConfig:
    """``kind``: ``"linear"`` or ``"mlp"``; ``hidden``: MLP layer widths; ``dropout``: MLP dropout (0-1)."""

    kind: str = "linear"
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, not {self.kind!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class ScoreHead(nn.Module):
    """``(B, d)`` features -> ``(B,)`` scores: ``(x - mean) / std`` clamped to [-8, 8], then linear or MLP
    (GELU, dropout). The clamp keeps a feature that was (nearly) constant in training - e.g. the share of
    clipped pixels - from exploding on an image where it is not."""

    clamp = 8.0

    def __init__(self, dim: int, config: HeadConfig):
        super().__init__()
        self.config = config
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if config.kind == "linear":
            self.net = nn.Linear(dim, 1)
        else:
            layers: list[nn.Module] = []
            width = dim
            for h in config.hidden:
                layers += [nn.Linear(width, h), nn.GELU(), nn.Dropout(config.dropout)]
                width = h
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

    def fit_standardisation(self, features: torch.Tensor) -> None:
        """Set mean/std from training features (constant features get std 1)."""
        self.mean.copy_(features.mean(0))
        std = features.std(0, unbiased=False)
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(((features - self.mean) / self.std).clamp(-self.clamp, self.clamp))[:, 0]


def load_head(state: dict[str, torch.Tensor], config: HeadConfig, source: str) -> ScoreHead:
    """A :class:`ScoreHead` with ``state`` loaded strictly (naming misfit tensors)."""
    if "mean" not in state:
        raise CheckpointError(f"{source}: head tensor 'mean' is missing; not a prefscore head")
    head = ScoreHead(int(state["mean"].shape[0]), config)
    expected = head.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source}: head does not fit its config ({config.kind}): missing {missing}, unexpected {unexpected}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{source}: head tensor '{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()
