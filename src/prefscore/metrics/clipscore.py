"""CLIPScore (Hessel et al. 2021): ``w * max(cos(image, prompt), 0)``.

Defaults: ``w = 2.5`` as published, no caption prefix, backbone ``openai/clip-vit-large-patch14``
through CLIP's HF processor (torchmetrics' choice of model). ``w=100`` gives torchmetrics'
``CLIPScore`` scale; ``prefix="A photo depicts"`` and an OpenAI ViT-B/32 reproduce the paper's
setting. A directory holding an OpenAI-format ``.pt`` (and no processor config) is preprocessed
with OpenAI CLIP's own transform, as the original ``clipscore.py`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import differentiable, hub, preprocess
from ..backbones.clip import OPENAI_ARCH
from ..backbones.loading import hf_max_length, hf_text_features, hf_token_counts, load_clip_tower, load_hf_tokenizer, load_processor_config, processor_dir
from .similarity import ClipSimilarityMetric

OPENAI_FILES = ("ViT-B-32.pt", "ViT-L-14.pt", "clip.pt", "model.pt")


class ClipScore(ClipSimilarityMetric):
    """CLIPScore in [0, w] (0.5-1.0 typical with w = 2.5)."""

    def __init__(self, spec, source: str, device="cpu", dtype="float32", w: float = 2.5, prefix: str = "", tokenizer: str | None = None):
        super().__init__(device, dtype)
        self.spec = spec
        self.w = float(w)
        self.prefix = prefix
        self.clip = load_clip_tower(source, OPENAI_ARCH, self.dtype, OPENAI_FILES, what="CLIP model").to(self.device)
        local = Path(source) if hub.is_local(source) else None
        self.processor = None
        if local is None or (local / "preprocessor_config.json").is_file():
            self.processor = load_processor_config(processor_dir(source, what="CLIP processor"))
        tok_source = tokenizer or source
        if local is not None and tokenizer is None and not (local / "vocab.json").is_file() and not (local / "tokenizer.json").is_file():
            tok_source = "openai/clip-vit-large-patch14"
        self.tokenizer = load_hf_tokenizer(processor_dir(tok_source, what="CLIP tokenizer"))
        self.image_size = self.clip.image_size

    def preprocess(self, image, name):
        if self.processor is not None:
            return preprocess.hf_clip(image, self.processor, name=name)
        return preprocess.openai_clip(image, self.image_size, name=name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        if self.processor is not None:
            return differentiable.hf_clip_tensor(pixels, self.processor, quantize=quantize)
        return differentiable.openai_clip_tensor(pixels, self.image_size, quantize=quantize)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        texts = [f"{self.prefix} {p}".strip() if self.prefix else p for p in prompts]
        self.note_truncation(prompts, lambda ps: hf_token_counts(self.tokenizer, [f"{self.prefix} {p}".strip() if self.prefix else p for p in ps]),
                             hf_max_length(self.tokenizer))
        return hf_text_features(self.clip, self.tokenizer, texts, self.device)

    def preprocess_key(self):
        return ("hf_clip", self.processor) if self.processor is not None else ("openai_clip", self.image_size)

    def forward(self, pixels, prompts):
        return self.w * self.cosine(pixels, prompts).clamp(min=0)

    def preference_temperature(self) -> float:
        """softmax(score / tau) = softmax(100 * cos) (CLIP's temperature) where cos > 0."""
        return self.w / 100.0
