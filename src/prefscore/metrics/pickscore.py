"""PickScore: ``exp(logit_scale) * cos`` of a fine-tuned CLIP-H, as in the PickScore README loop.

Model source: ``yuvalkirstain/PickScore_v1`` (HF CLIPModel) with the tokenizer and image processor
of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, or a local directory holding the model files and,
optionally, the processor files (then both are read from it). Images go through transformers 4.x's
``CLIPImageProcessor`` semantics (reproduced in Pillow; transformers 5 differs on alpha and with
its torchvision backend), text through the HF fast tokenizer (truncated to 77 tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import hub
from ..backbones.clip import OPEN_CLIP_VIT_H_14
from ..backbones.loading import has_processor, hf_max_length, hf_text_features, hf_token_counts, load_clip_processor, load_clip_tower
from ..base import HFProcessorInput
from .similarity import ClipSimilarityMetric

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(HFProcessorInput, ClipSimilarityMetric):
    """PickScore (about 18-23 on real images; compare within a prompt)."""

    def __init__(self, spec, source: str, device="cpu", dtype="float32", processor: str | None = None):
        super().__init__(device, dtype)
        self.spec = spec
        repo = PICKSCORE_REPO if source == spec.default_model else source
        self.clip = load_clip_tower(repo, OPEN_CLIP_VIT_H_14, self.dtype, what="PickScore model").to(self.device)
        if processor is None:
            processor = repo if hub.is_local(repo) and has_processor(Path(repo)) else PROCESSOR_REPO
        self.tokenizer, self.processor = load_clip_processor(processor, what="CLIP-H processor")

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        self.note_truncation(prompts, lambda ps: hf_token_counts(self.tokenizer, ps), hf_max_length(self.tokenizer))
        return hf_text_features(self.clip, self.tokenizer, prompts, self.device)


    def forward(self, pixels, prompts):
        return self.clip.logit_scale.float().exp() * self.cosine(pixels, prompts)

    def preference_temperature(self) -> float:
        """The score already carries ``exp(logit_scale)``: softmax(score) is PickScore's probability."""
        return 1.0
