"""HPS v2 / v2.1: cosine of open_clip ViT-H-14 image and text features, HPSv2's own pipeline.

Model source: the hub repo ``xswu/HPSv2`` (files ``HPS_v2_compressed.pt`` and
``HPS_v2.1_compressed.pt``) or a local directory with the same files. Optional extras in the
directory: ``open_clip_config.json`` (head widths; default: open_clip's ViT-H-14) and the CLIP BPE
(``bpe_simple_vocab_16e6.txt.gz`` or ``tokenizer/merges.txt``; default: from
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Text is tokenised with open_clip's tokenizer rules.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import differentiable, hub, preprocess
from ..backbones.clip import OPEN_CLIP_VIT_H_14, ClipArch, ClipTower, clip_from_state_dict, read_state_dict
from ..backbones.tokenizer import OpenCLIPTokenizer
from .similarity import ClipSimilarityMetric

HPS_REPO = "xswu/HPSv2"
BPE_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
BPE_NAMES = ("bpe_simple_vocab_16e6.txt.gz", "tokenizer/merges.txt", "merges.txt")


class HPSv2(ClipSimilarityMetric):
    """HPS v2.0: cosine in [-1, 1] (about 0.2-0.35 on real images; tables print x100)."""

    checkpoint_name = "HPS_v2_compressed.pt"

    def __init__(self, spec, source: str, device="cpu", dtype="float32", checkpoint: str | None = None, tokenizer: str | None = None):
        super().__init__(device, dtype)
        self.spec = spec
        repo = HPS_REPO if source == spec.default_model else source
        ckpt = hub.find_file(repo, [checkpoint or self.checkpoint_name], what=f"{spec.name} checkpoint")
        arch = OPEN_CLIP_VIT_H_14
        if hub.is_local(repo) and (Path(repo) / "open_clip_config.json").is_file():
            arch = ClipArch.from_open_clip_config(Path(repo) / "open_clip_config.json", act="gelu")
        self.clip = ClipTower(clip_from_state_dict(read_state_dict(ckpt), arch, str(ckpt), self.dtype)).to(self.device)
        bpe_source = tokenizer or (repo if hub.is_local(repo) and any((Path(repo) / n).is_file() for n in BPE_NAMES) else BPE_REPO)
        bpe = hub.find_file(bpe_source, BPE_NAMES, what="CLIP BPE vocabulary")
        self.tokenizer = OpenCLIPTokenizer.from_file(bpe, context_length=self.clip.model.config.text_config.max_position_embeddings)
        self.image_size = self.clip.image_size

    def preprocess(self, image, name):
        return preprocess.hps_pad(image, self.image_size, name=name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        return differentiable.hps_tensor(pixels, self.image_size, quantize=quantize)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        self.note_truncation(prompts, lambda ps: [len(self.tokenizer.encode(p)) + 2 for p in ps], self.tokenizer.context_length)
        return self.clip.text_features(self.tokenizer(prompts).to(self.device))

    def preprocess_key(self):
        return ("hps_pad", self.image_size)

    def forward(self, pixels, prompts):
        return self.cosine(pixels, prompts)

    def preference_temperature(self) -> float:
        """HPS trains ``logit_scale * cos`` with a 2-way softmax; logit_scale is in the checkpoint."""
        return 1.0 / math.exp(float(self.clip.logit_scale))


class HPSv21(HPSv2):
    """HPS v2.1: cosine in [-1, 1]; not on the same scale as v2.0."""

    checkpoint_name = "HPS_v2.1_compressed.pt"
