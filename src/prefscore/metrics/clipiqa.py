"""CLIP-IQA: for each antonym pair, ``softmax(100 * cos(image, [positive, negative]))[positive]``.

Axes are torchmetrics' 16 built-in pairs (its exact sentences, positive first) or user pairs
``(positive, negative)``; ``score`` returns ``(N, k)`` in the order given (``(N,)`` for one axis).
Backbone ``"hf"`` (default): any HF CLIP, default ``openai/clip-vit-base-patch16``, images through
CLIP's processor (resize + crop 224), as torchmetrics' HF branch with ``data_range`` matching the
input. The original CLIP-IQA backbone (OpenAI RN50 without positional embedding, full resolution)
is :mod:`prefscore.metrics.clipiqa_rn50`.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ..backbones.clip import OPENAI_ARCH
from ..backbones.loading import hf_text_features, load_clip_processor, load_clip_tower
from ..base import HFProcessorInput, Metric

# torchmetrics' built-in pairs (name -> (positive, negative)); "colorfullness" is its spelling.
BUILTIN_PROMPTS: dict[str, tuple[str, str]] = {
    "quality": ("Good photo.", "Bad photo."),
    "brightness": ("Bright photo.", "Dark photo."),
    "noisiness": ("Clean photo.", "Noisy photo."),
    "colorfullness": ("Colorful photo.", "Dull photo."),
    "sharpness": ("Sharp photo.", "Blurry photo."),
    "contrast": ("High contrast photo.", "Low contrast photo."),
    "complexity": ("Complex photo.", "Simple photo."),
    "natural": ("Natural photo.", "Synthetic photo."),
    "happy": ("Happy photo.", "Sad photo."),
    "scary": ("Scary photo.", "Peaceful photo."),
    "new": ("New photo.", "Old photo."),
    "warm": ("Warm photo.", "Cold photo."),
    "real": ("Real photo.", "Abstract photo."),
    "beautiful": ("Beautiful photo.", "Ugly photo."),
    "lonely": ("Lonely photo.", "Sociable photo."),
    "relaxing": ("Relaxing photo.", "Stressful photo."),
}
ALIASES = {"colorfulness": "colorfullness"}

Axis = Union[str, tuple[str, str]]


def parse_axes(prompts: Axis | Sequence[Axis]) -> tuple[list[str], list[tuple[str, str]]]:
    """Axis names and (positive, negative) sentence pairs for a CLIP-IQA ``prompts`` option."""
    if isinstance(prompts, str) or (isinstance(prompts, tuple) and len(prompts) == 2 and all(isinstance(p, str) for p in prompts)
                                     and not all(p in BUILTIN_PROMPTS or p in ALIASES for p in prompts)):
        prompts = [prompts]
    names, pairs = [], []
    for item in prompts:
        if isinstance(item, str):
            key = ALIASES.get(item, item)
            if key not in BUILTIN_PROMPTS:
                raise ValueError(f"unknown CLIP-IQA axis {item!r}; built-in axes: {', '.join(BUILTIN_PROMPTS)}; "
                                 "or give a (positive, negative) pair of sentences")
            names.append(key)
            pairs.append(BUILTIN_PROMPTS[key])
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item):
            names.append(f"custom:{item[0]}|{item[1]}")
            pairs.append((item[0], item[1]))
        else:
            raise ValueError(f"a CLIP-IQA axis is a built-in name or a (positive, negative) pair, not {item!r}")
    if not names:
        raise ValueError("CLIP-IQA needs at least one axis")
    return names, pairs


class ClipIQA(Metric):
    """CLIP-IQA probabilities in [0, 1], one column per axis (higher = more like the positive prompt)."""

    def __init__(self, spec, source: str, device="cpu", dtype="float32", prompts: Axis | Sequence[Axis] = ("quality",),
                 backbone: str = "hf", logit_scale: float = 100.0):
        super().__init__(device, dtype)
        self.spec = spec
        names, self.pairs = parse_axes(prompts)
        self.output_names = tuple(names)
        self.logit_scale = float(logit_scale)
        if backbone == "rn50":
            from .clipiqa_rn50 import RN50Backbone

            self.backbone = RN50Backbone(None if source == spec.default_model else source, self.dtype, self.device)
        elif backbone == "hf":
            self.backbone = HFBackbone(source, self.dtype, self.device)
        else:
            raise ValueError(f"CLIP-IQA backbone must be 'hf' or 'rn50', not {backbone!r}")
        sentences = [s for pair in self.pairs for s in pair]
        with torch.inference_mode():
            anchors = self.backbone.text_features(sentences).float()
        self.anchors = anchors / anchors.norm(dim=-1, keepdim=True)

    def preprocess(self, image, name):
        return self.backbone.preprocess(image, name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        return self.backbone.preprocess_tensor(pixels, quantize=quantize)

    def preprocess_key(self):
        return self.backbone.preprocess_key() if isinstance(self.backbone, HFBackbone) else None

    def image_tower(self):
        return (self.backbone, "clip") if isinstance(self.backbone, HFBackbone) else None

    def forward(self, pixels, prompts=None):
        img = self.backbone.image_features(pixels).float()
        img = img / img.norm(dim=-1, keepdim=True)
        logits = self.logit_scale * img @ self.anchors.t()
        return logits.view(len(img), len(self.pairs), 2).softmax(dim=-1)[..., 0]


class HFBackbone(HFProcessorInput):
    """Any HF CLIP (or OpenAI-format ``.pt`` in a directory), CLIP processor preprocessing."""

    def __init__(self, source: str, dtype: torch.dtype, device: torch.device):
        self.device = device
        self.clip = load_clip_tower(source, OPENAI_ARCH, dtype, ("model.pt",), what="CLIP model").to(device)
        self.tokenizer, self.processor = load_clip_processor(source, what="CLIP processor")

    def image_features(self, pixels):
        return self.clip.image_features(pixels)

    def text_features(self, sentences):
        # torchmetrics pads all anchors together and does not truncate
        return hf_text_features(self.clip, self.tokenizer, sentences, self.device, truncate=False)
