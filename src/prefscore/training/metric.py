"""``prefscore.load(<trained model dir>)``: the metric named ``custom`` in the registry.

A head model recomputes its backbone's features with the same extractor it was trained on (the
weight-free statistics, or the CLIP named in ``prefscore.json``; ``backbone=`` points elsewhere if
that CLIP has moved) and applies the saved head. A fine-tuned model scores as PickScore does:
``exp(logit_scale) * cos(image, prompt)`` of the CLIP saved in ``backbone/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..backbones.clip import OPENAI_ARCH
from ..backbones.loading import hf_text_features, load_clip_processor, load_clip_tower
from ..base import Metric
from ..errors import CheckpointError
from ..hub import check_safetensors
from .. import preprocess
from .features import build_extractor, combine
from .heads import HeadConfig, load_head
from .modeldir import BACKBONE_DIR, HEAD_FILE, read_meta


class CustomMetric(Metric):
    """A model trained with ``prefscore train``; units and range are those of its training (see its card).

    ``source``: the model directory. ``backbone``: CLIP source to use instead of the one recorded
    (head models on CLIP features only); ``processor``: the same for its tokenizer/processor files.
    """

    def __init__(self, spec, source: str, device="cpu", dtype="float32", backbone: str | None = None,
                 processor: str | None = None):
        super().__init__(device, dtype)
        root = Path(source).expanduser()
        if not root.is_dir():
            raise CheckpointError(f"{source}: the model of 'custom' is a directory written by `prefscore train`")
        self.root = root
        self.meta = read_meta(root)
        self.spec = dataclasses.replace(
            spec,
            inputs="image+prompt" if self.meta["prompt_aware"] else "image",
            summary=f"{spec.summary} [{self.meta['objective']}, {self.meta['kind']}, {root}]",
        )
        self.temperature = float(self.meta["temperature"])
        if self.meta["kind"] == "head":
            self._init_head(backbone, processor)
        else:
            if backbone is not None or processor is not None:
                raise TypeError("a fine-tuned model carries its own backbone; backbone=/processor= apply to head models")
            self._init_finetuned()

    def _init_head(self, backbone: str | None, processor: str | None) -> None:
        desc = self.meta["backbone"]
        if desc["type"] == "stats":
            if backbone not in (None, "stats"):
                raise TypeError("this model was trained on the weight-free 'stats' features; it takes no backbone=")
            source, proc = "stats", None
        else:
            source = backbone or desc["source"]
            proc = processor or (desc.get("processor") if backbone is None else None)
        self.extractor = build_extractor(source, self.device, self.dtype, proc)
        if desc["type"] == "stats" and desc.get("version") != self.extractor.describe()["version"]:
            raise CheckpointError(f"{self.root}: trained on {desc.get('version')} features, this prefscore computes "
                                  f"{self.extractor.describe()['version']}")
        from safetensors.torch import load_file

        head_path = self.root / HEAD_FILE
        if not head_path.is_file():
            raise CheckpointError(f"{self.root}: {HEAD_FILE} is missing")
        cfg = self.meta["head"]
        check_safetensors(head_path)
        self.head = load_head(load_file(str(head_path)), HeadConfig(cfg["kind"], tuple(cfg["hidden"]), cfg["dropout"]),
                              str(head_path)).to(self.device)
        self.mode = self.meta["features"]

    def _init_finetuned(self) -> None:
        bdir = self.root / BACKBONE_DIR
        self.clip = load_clip_tower(str(bdir), OPENAI_ARCH, self.dtype, what="fine-tuned CLIP").to(self.device)
        self.tokenizer, self.processor = load_clip_processor(bdir, what="fine-tuned CLIP processor")
        self.extractor = None

    def preprocess(self, image, name):
        if self.extractor is not None:
            return self.extractor.preprocess(image, name)
        return preprocess.hf_clip(image, self.processor, name=name)

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        if self.extractor is not None:
            return self.extractor.text_features(prompts)
        feats = hf_text_features(self.clip, self.tokenizer, prompts, self.device).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def forward(self, pixels, prompts):
        if self.extractor is None:
            img = self.clip.image_features(pixels).float()
            img = img / img.norm(dim=-1, keepdim=True)
            txt = self.cached_text_features(prompts, self._encode_text)
            return self.clip.logit_scale.float().exp() * (img * txt).sum(-1)
        img = self.extractor.image_features(pixels).float()
        txt = self.cached_text_features(prompts, self._encode_text) if self.mode == "image+text" else None
        return self.head(combine(img, txt, self.mode))

    def preference_temperature(self) -> float:
        """tau of ``sigmoid((s_a - s_b) / tau)`` used in training (1 for fine-tuned models: the score carries the scale)."""
        return self.temperature
