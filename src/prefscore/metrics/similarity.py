"""Shared core of the prompt-aware CLIP metrics (HPS, PickScore, CLIPScore): cosine of normalised features."""

from __future__ import annotations

import torch

from ..backbones.clip import ClipTower
from ..base import Metric


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True)


class ClipSimilarityMetric(Metric):
    """A metric built on ``cos(image, prompt)`` of a :class:`ClipTower` (``self.clip``).

    Subclasses say how prompts become projected text features (:meth:`text_features`) and how the
    cosine becomes their score (:meth:`forward`). Each distinct prompt is encoded once.
    """

    clip: ClipTower

    def image_tower(self):
        return self, "clip"

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        return l2_normalize(self.text_features(prompts))

    def cosine(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        image = l2_normalize(self.clip.image_features(pixels))
        text = self.cached_text_features(prompts, self._encode_text)
        return (image * text).sum(-1)
