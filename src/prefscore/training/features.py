"""Feature extractors for the fast path: the weight-free image statistics, or any CLIP's embeddings.

An extractor has a ``key`` (what the embedding cache is keyed by: the backbone's identity and
content), ``preprocess(pil_image, name) -> tensor`` and ``image_features(batch) -> (B, d)``; CLIP
extractors also have ``text_features(prompts) -> (M, d)``. Training and scoring both go through
these objects, so a trained model sees exactly the features it was trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .. import hub, preprocess
from ..backbones.clip import OPENAI_ARCH
from ..backbones.loading import HF_CLIP_FILES, hf_text_features, load_clip_tower, load_hf_tokenizer, load_processor_config
from ..base import Metric, resolve_dtype
from ..errors import ModelSourceError
from ..registry import MetricSpec
from . import stats

OPENAI_FILES = ("ViT-L-14.pt", "ViT-B-32.pt", "ViT-B-16.pt", "clip.pt", "model.pt")
FEATURE_MODES = ("image", "image+text")


class StatsExtractor:
    """The :mod:`~prefscore.training.stats` features (no weights, no text tower)."""

    name = "stats"
    has_text = False

    def __init__(self) -> None:
        self.key = f"{stats.VERSION}-max{stats.MAX_SIDE}"
        self.image_dim = len(stats.FEATURES)
        self.text_dim = 0

    def describe(self) -> dict:
        return {"type": "stats", "version": stats.VERSION, "features": list(stats.FEATURES)}

    def preprocess(self, image, name: str) -> torch.Tensor:
        return torch.from_numpy(stats.image_stats(image, name)).to(torch.float32)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float()

    def to(self, device) -> "StatsExtractor":
        return self


def model_fingerprint(root: Path) -> str:
    """Content fingerprint of a model folder: config files in full, weight files by size + first/last MiB."""
    h = hashlib.sha256()
    for f in sorted(root.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            with f.open("rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, size - (1 << 20)))
                tail = fh.read(1 << 20)
            h.update(f"{f.name}:{size}:".encode() + hashlib.sha256(head + tail).digest())
        elif f.name in ("config.json", "preprocessor_config.json", "open_clip_config.json"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:24]


class ClipExtractor:
    """L2-normalised projected image (and text) embeddings of a CLIP model.

    ``source``: a local folder (HF files, or an OpenAI-format ``.pt``) or a hub id. ``processor``:
    where the tokenizer and ``preprocessor_config.json`` are, default the source. Images go through
    the HF CLIP processor pipeline when that config exists, else OpenAI CLIP's transform.
    """

    has_text = True

    def __init__(self, source: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 processor: str | None = None):
        self.source = str(source)
        self.processor_source = str(processor) if processor is not None else self.source
        self.device = torch.device(device)
        root = Path(self.source).expanduser() if hub.is_local(self.source) else hub.local_dir(self.source, HF_CLIP_FILES, what="CLIP model")
        self.tower = load_clip_tower(str(root), OPENAI_ARCH, resolve_dtype(dtype), OPENAI_FILES, what="CLIP model").to(self.device)
        self.tower.requires_grad_(False)
        self.processor = None
        proc_root = root if processor is None else (Path(processor).expanduser() if hub.is_local(processor) else None)
        if proc_root is None:
            proc_root = hub.local_dir(processor, ["*.json", "*.txt"], what="CLIP processor")
        self.processor_root = proc_root
        if (proc_root / "preprocessor_config.json").is_file():
            self.processor = load_processor_config(proc_root)
        self._tokenizer = None
        self.image_size = self.tower.image_size
        self.image_dim = self.text_dim = int(self.tower.model.config.projection_dim)
        pipeline = "hf" if self.processor is not None else "openai"
        self.key = f"clip-{model_fingerprint(root)}-{pipeline}-{hashlib.sha256(repr(self.processor).encode()).hexdigest()[:8]}"
        self.name = f"clip:{self.source}"

    def describe(self) -> dict:
        return {"type": "clip", "source": self.source, "processor": self.processor_source,
                "pipeline": "hf" if self.processor is not None else "openai", "dim": self.image_dim}

    def to(self, device) -> "ClipExtractor":
        self.device = torch.device(device)
        self.tower.to(self.device)
        return self

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if not any((self.processor_root / f).is_file() for f in ("tokenizer.json", "vocab.json")):
                raise ModelSourceError(
                    f"{self.processor_root}: no CLIP tokenizer (tokenizer.json or vocab.json + merges.txt); "
                    f"pass processor=<folder or hub id with the tokenizer>, or train an image-only head"
                )
            self._tokenizer = load_hf_tokenizer(self.processor_root)
        return self._tokenizer

    def preprocess(self, image, name: str) -> torch.Tensor:
        if self.processor is not None:
            return preprocess.hf_clip(image, self.processor, name=name)
        return preprocess.openai_clip(image, self.image_size, name=name)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.tower.image_features(pixels).float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        feats = hf_text_features(self.tower, self.tokenizer, prompts, self.device).float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def build_extractor(backbone: str, device="cpu", dtype="float32", processor: str | None = None):
    """``"stats"`` -> :class:`StatsExtractor`; anything else is a CLIP source -> :class:`ClipExtractor`."""
    if backbone == "stats":
        return StatsExtractor()
    return ClipExtractor(backbone, device, dtype, processor)


def combine(image: torch.Tensor, text: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Head input: ``image`` alone, or ``[image, text, image * text]`` for ``"image+text"``.

    The product term is what lets a *linear* head depend on the prompt: a text term alone adds the
    same amount to every image of a prompt and cancels in any comparison between them.
    """
    if mode == "image":
        return image
    if mode != "image+text":
        raise ValueError(f"feature mode must be one of {FEATURE_MODES}, not {mode!r}")
    if text is None:
        raise ValueError("image+text features need text embeddings")
    return torch.cat([image, text, image * text], dim=-1)


def feature_dim(extractor, mode: str) -> int:
    return extractor.image_dim if mode == "image" else extractor.image_dim + 2 * extractor.text_dim


class EmbeddingEngine(Metric):
    """The scoring engine (batching, image decoding, per-item error capture) run over an extractor:
    ``score_records(paths, None)`` returns ``(N, d)`` features."""

    def __init__(self, extractor, device="cpu", batch_size: int = 32):
        super().__init__(device, "float32")
        self.extractor = extractor
        self.default_batch_size = batch_size
        dim = extractor.image_dim
        self.output_names = tuple(f"f{i}" for i in range(dim))
        self.spec = MetricSpec(
            name=f"embed {extractor.key}", family="embedding", summary="backbone embeddings for training",
            inputs="image", output_range=(-np.inf, np.inf), typical="", higher_is_better=True,
            default_model="", weights_license="", strength="", caveat="", entry="", options={},
        )

    def preprocess(self, image, name):
        return self.extractor.preprocess(image, name)

    @torch.inference_mode()
    def forward(self, pixels, prompts=None):
        return self.extractor.image_features(pixels)

