"""ImageReward: BLIP (ViT + BERT with cross-attention over image tokens) and an MLP reward head.

Model source: the hub repo ``THUDM/ImageReward`` (``ImageReward.pt`` + ``med_config.json``) or a
local directory with the same files. The tokenizer is bert-base-uncased's WordPiece vocabulary
(read from ``tokenizer/`` in the model directory when present, else the hub repo
``bert-base-uncased``) plus BLIP's two added tokens ``[DEC]`` (30522) and ``[ENC]`` (30523).

The official checkpoint is converted in memory onto transformers' ``BlipVisionModel`` and
``BlipTextModel`` (decoder config, so every layer has cross-attention; run bidirectionally). Sizes
come from the checkpoint (vision tower, head) and ``med_config.json`` (text tower: the official
code builds it from that file), so tiny test checkpoints and the real ViT-L/16 + BERT-base share one
code path. The score reproduces ``ImageReward.score``:

1. OpenAI CLIP ``_transform(224)`` (:func:`prefscore.preprocess.openai_clip`);
2. prompt -> ``[CLS] ... [SEP] [PAD]...``, 35 ids, truncated (``[CLS]`` is *not* swapped for ``[ENC]``);
3. all ViT tokens after the final LayerNorm (eps 1e-6) as ``encoder_hidden_states``;
4. the text encoder's ``[CLS]`` output -> MLP ``d -> 1024 -> 128 -> 64 -> 16 -> 1`` (no activations);
5. ``reward = (mlp - 0.16717362830052426) / 1.0333394966054072``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import differentiable, hub, preprocess
from ..backbones.clip import count_layers, load_into, read_state_dict
from ..base import Metric, check_options
from ..errors import CheckpointError, ModelSourceError, PromptError
from ..images import ImageInput

IMAGEREWARD_REPO = "THUDM/ImageReward"
CHECKPOINT_NAME = "ImageReward.pt"
MED_CONFIG_NAME = "med_config.json"
TOKENIZER_REPO = "bert-base-uncased"
TOKENIZER_FILES = ["vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"]

REWARD_MEAN = 0.16717362830052426
"""Mean of the raw MLP output that the official code subtracts (``ImageReward.py``)."""
REWARD_STD = 1.0333394966054072
"""Standard deviation the official code divides by; the published reward is about N(0, 1)."""
MAX_LENGTH = 35
"""Prompt length in WordPiece ids, ``[CLS]`` and ``[SEP]`` included (longer prompts are truncated)."""
VISION_HEAD_WIDTH = 64
"""BLIP's ViTs (base: 768 / 12 heads, large: 1024 / 16 heads) all use 64-wide attention heads."""
VISION_LAYER_NORM_EPS = 1e-6
"""BLIP's ``VisionTransformer`` LayerNorm eps (transformers' default 1e-5 moves rewards by ~2e-3)."""
MLP_SIZES = (1024, 128, 64, 16, 1)
"""Output sizes of the official head's five Linear layers (``layers.0, 2, 4, 6, 7``)."""


@dataclass(frozen=True)
class MedConfig:
    """The fields of BLIP's ``med_config.json`` (a BERT config) that size the text encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def read(cls, path: Path) -> "MedConfig":
        try:
            cfg = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read the BLIP text config: {exc}") from None
        need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise CheckpointError(f"{path}: not a BLIP med_config.json (missing {', '.join(missing)})")
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position_embeddings=int(cfg["max_position_embeddings"]),
            hidden_act=str(cfg.get("hidden_act", "gelu")),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(cfg.get("pad_token_id", 0)),
        )


class RewardMLP(nn.Module):
    """The official head: Linear(d,1024) Dropout(.2) Linear(1024,128) Dropout(.2) Linear(128,64)
    Dropout(.1) Linear(64,16) Linear(16,1), no activations (keys ``layers.{0,2,4,6,7}``)."""

    def __init__(self, input_size: int):
        super().__init__()
        a, b, c, d, e = MLP_SIZES
        self.layers = nn.Sequential(nn.Linear(input_size, a), nn.Dropout(0.2), nn.Linear(a, b), nn.Dropout(0.2),
                                    nn.Linear(b, c), nn.Dropout(0.1), nn.Linear(c, d), nn.Linear(d, e))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _need(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: tensor '{key}' is missing; this is not an ImageReward (BLIP) checkpoint")
    return sd[key]


def vision_config(sd: Mapping[str, torch.Tensor], source: str) -> dict:
    """``BlipVisionConfig`` fields read off the ``blip.visual_encoder.*`` tensors."""
    p = "blip.visual_encoder."
    width = _need(sd, p + "cls_token", source).shape[-1]
    conv = _need(sd, p + "patch_embed.proj.weight", source)
    n_pos = _need(sd, p + "pos_embed", source).shape[1]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise CheckpointError(f"{source}: tensor '{p}pos_embed' has {n_pos} positions, not a square grid + 1")
    if width % VISION_HEAD_WIDTH:
        raise CheckpointError(f"{source}: tensor '{p}cls_token' has width {width}, not a multiple of {VISION_HEAD_WIDTH}")
    depth = count_layers(sd, p + "blocks.")
    if depth == 0:
        raise CheckpointError(f"{source}: no tensors '{p}blocks.N.*'; this is not an ImageReward (BLIP) checkpoint")
    return dict(
        hidden_size=width,
        intermediate_size=_need(sd, p + "blocks.0.mlp.fc1.weight", source).shape[0],
        num_hidden_layers=depth,
        num_attention_heads=width // VISION_HEAD_WIDTH,
        patch_size=conv.shape[-1],
        image_size=conv.shape[-1] * grid,
        hidden_act="gelu",
        layer_norm_eps=VISION_LAYER_NORM_EPS,
        attention_dropout=0.0,
    )


def text_config(med: MedConfig, encoder_width: int) -> dict:
    """``BlipTextConfig`` fields: BERT sizes from ``med_config.json``; the cross-attention width is the
    ViT width (the official code overwrites ``encoder_width`` with it)."""
    return dict(
        vocab_size=med.vocab_size,
        hidden_size=med.hidden_size,
        encoder_hidden_size=encoder_width,
        intermediate_size=med.intermediate_size,
        num_hidden_layers=med.num_hidden_layers,
        num_attention_heads=med.num_attention_heads,
        max_position_embeddings=med.max_position_embeddings,
        hidden_act=med.hidden_act,
        layer_norm_eps=med.layer_norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=med.pad_token_id,
        is_decoder=True,  # builds the cross-attention blocks; forward runs bidirectionally
    )


def convert_vision(sd: Mapping[str, torch.Tensor], depth: int) -> dict[str, tuple[str, torch.Tensor]]:
    """``blip.visual_encoder.*`` -> ``BlipVisionModel`` keys, each with its checkpoint name."""
    p = "blip.visual_encoder."
    names = {
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding": "pos_embed",
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    }
    block = {"layer_norm1": "norm1", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
             "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(depth):
        for dst, src in block.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layers.{i}.{dst}.{kind}"] = f"blocks.{i}.{src}.{kind}"
    return {dst: (p + src, sd.get(p + src)) for dst, src in names.items()}


def convert_text(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """``blip.text_encoder.*`` keys are transformers' ``BlipTextModel`` keys already."""
    p = "blip.text_encoder."
    params = [k for k, _ in model.named_parameters()]
    return {k: (p + k, sd.get(p + k)) for k in params}


def convert_mlp(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    return {k: ("mlp." + k, sd.get("mlp." + k)) for k, _ in model.named_parameters()}


def check_state(model: nn.Module, named: dict[str, tuple[str, torch.Tensor | None]], source: str) -> dict[str, torch.Tensor]:
    """Every tensor present with the model's shape, or a :class:`CheckpointError` naming the checkpoint tensor."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [orig for _, (orig, t) in named.items() if t is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: tensor(s) {', '.join(repr(m) for m in missing[:5])}{more} missing from the checkpoint")
    for dst, (orig, t) in named.items():
        if tuple(t.shape) != tuple(expected[dst]):
            raise CheckpointError(
                f"{source}: tensor '{orig}' has shape {tuple(t.shape)}, the model expects {tuple(expected[dst])} "
                f"(sizes come from the ViT tensors and {MED_CONFIG_NAME})"
            )
    return {dst: t for dst, (_, t) in named.items()}


class ImageRewardModel(nn.Module):
    """BLIP vision tower, BLIP text encoder with cross-attention, and the reward MLP."""

    def __init__(self, vision: nn.Module, text: nn.Module, mlp: RewardMLP):
        super().__init__()
        self.vision = vision
        self.text = text
        self.mlp = mlp

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Standardised rewards ``(B,)`` for pixels ``(B, 3, S, S)`` and token ids/masks ``(B, L)``.

        Pure torch: differentiable with respect to ``pixels``.
        """
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask,
                           encoder_hidden_states=image_embeds).last_hidden_state
        raw = self.mlp(hidden[:, 0, :].float())[:, 0]  # the official code casts the [CLS] feature to float32
        return (raw - REWARD_MEAN) / REWARD_STD


def imagereward_from_state_dict(sd: Mapping[str, torch.Tensor], med: MedConfig, source: str,
                                dtype: torch.dtype = torch.float32) -> ImageRewardModel:
    """Build the model from an official ``ImageReward.pt`` state dict (converted in memory).

    Tensors outside the vision tower, text encoder and MLP (the unused ITC projections) are ignored,
    as the official ``load_state_dict(strict=False)`` does; a missing tensor or one whose shape
    differs from the model's raises :class:`CheckpointError` naming it.
    """
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    vcfg = vision_config(sd, source)
    n_text = count_layers(sd, "blip.text_encoder.encoder.layer.")
    if n_text != med.num_hidden_layers:
        raise CheckpointError(
            f"{source}: the checkpoint has {n_text} text encoder layers ('blip.text_encoder.encoder.layer.N'), "
            f"{MED_CONFIG_NAME} says {med.num_hidden_layers}"
        )
    tcfg = text_config(med, vcfg["hidden_size"])
    if med.hidden_size % med.num_attention_heads:
        raise CheckpointError(f"{source}: {MED_CONFIG_NAME}: hidden_size {med.hidden_size} is not divisible by "
                              f"num_attention_heads {med.num_attention_heads}")
    vision_cfg, text_cfg = BlipVisionConfig(**vcfg), BlipTextConfig(**tcfg)
    vision_cfg._attn_implementation = "eager"
    text_cfg._attn_implementation = "eager"  # BLIP's text attention adds a float mask to its scores
    with torch.device("meta"):
        vision = BlipVisionModel(vision_cfg)
        text = BlipTextModel(text_cfg, add_pooling_layer=False)
        mlp = RewardMLP(med.hidden_size)
    vision = load_into(vision, check_state(vision, convert_vision(sd, vcfg["num_hidden_layers"]), source), source, dtype)
    text = load_into(text, check_state(text, convert_text(sd, text), source), source, dtype)
    mlp = load_into(mlp, check_state(mlp, convert_mlp(sd, mlp), source), source, torch.float32)
    return ImageRewardModel(vision, text, mlp).eval()


def load_blip_tokenizer(source: str):
    """bert-base-uncased's ``BertTokenizer`` with BLIP's ``[DEC]`` (bos) and ``[ENC]`` tokens added."""
    from transformers import BertTokenizer

    directory = hub.local_dir(source, TOKENIZER_FILES, what="bert-base-uncased tokenizer (vocab.txt)")
    if not (Path(directory) / "vocab.txt").is_file():
        raise ModelSourceError(f"{directory}: no vocab.txt (the bert-base-uncased WordPiece vocabulary)")
    try:
        tokenizer = BertTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{directory}: cannot load the BERT tokenizer: {exc}") from None
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(Metric):
    """ImageReward reward: unbounded, about N(0, 1) (standardised with the official mean and std);
    higher is better; compare images of the same prompt.

    Options: ``checkpoint`` (file name in the model directory/repo, default ``ImageReward.pt``),
    ``tokenizer`` (directory or hub id of bert-base-uncased's tokenizer files).
    """

    default_batch_size = 8

    def __init__(self, spec, source: str, device="cpu", dtype="float32", checkpoint: str | None = None,
                 tokenizer: str | None = None, **unknown):
        check_options(spec.name, unknown, ("checkpoint", "tokenizer"))
        super().__init__(device, dtype)
        self.spec = spec
        repo = IMAGEREWARD_REPO if source == spec.default_model else source
        ckpt = hub.find_file(repo, [checkpoint or CHECKPOINT_NAME], what="ImageReward checkpoint")
        med_path = hub.find_file(repo, [MED_CONFIG_NAME], what="BLIP text config (med_config.json)")
        self.model = imagereward_from_state_dict(read_state_dict(ckpt), MedConfig.read(med_path), str(ckpt),
                                                 self.dtype).to(self.device)
        if tokenizer is None:
            local_tok = Path(repo).expanduser() / "tokenizer"
            tokenizer = str(local_tok) if hub.is_local(repo) and local_tok.is_dir() else TOKENIZER_REPO
        self.tokenizer = load_blip_tokenizer(tokenizer)
        self.image_size = self.model.image_size

    def preprocess(self, image, name):
        return preprocess.openai_clip(image, self.image_size, name=name)

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess`: pixels ``(B, 3, H, W)`` in [0, 1] -> model input."""
        return differentiable.openai_clip_tensor(pixels, self.image_size, quantize=quantize)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention masks ``(B, 35)``: ``[CLS] ... [SEP]`` padded with ``[PAD]`` (0),
        truncated to 35 ids as the reference does (the last kept id is ``[SEP]``)."""
        self.note_truncation(prompts, lambda ps: [len(ids) for ids in self.tokenizer(ps, truncation=False, verbose=False)["input_ids"]],
                             MAX_LENGTH)
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def forward(self, pixels, prompts):
        if prompts is None:
            raise PromptError(f"metric '{self.spec.name}' scores an image against a prompt: pass prompts=")
        ids, mask = self.tokenize(list(prompts))
        return self.model(pixels, ids, mask)

    def preference_temperature(self) -> float:
        """``1 / std`` (about 0.9677): the model was trained with ``-log sigmoid(r_a - r_b)`` on the raw
        MLP output ``r = std * score + mean``, so ``softmax(score / tau)`` is that Bradley-Terry form."""
        return 1.0 / REWARD_STD

    def rank(self, prompt: str, images: Sequence[ImageInput] | Iterable[ImageInput], *, batch_size: int | None = None,
             on_error: str = "raise") -> tuple[list[int], list[float]]:
        """Best-of-n for one prompt, as the official ``inference_rank``: ``(ranks, rewards)``.

        ``ranks[i]`` is the 1-based rank of ``images[i]`` (1 = highest reward); ``rewards[i]`` its
        reward (a Python float, the same value :meth:`score` gives). Equal rewards keep input order.
        With ``on_error="nan"`` an unreadable image gets a NaN reward and the last ranks; with
        ``"raise"`` (default) :class:`~prefscore.errors.ScoringError` is raised after scoring the rest.
        """
        if not isinstance(prompt, str):
            raise PromptError("rank() takes one prompt (a string) shared by all candidate images")
        rewards = np.atleast_1d(np.asarray(self.score(images, prompt, batch_size=batch_size, on_error=on_error),
                                           dtype=np.float64))
        order = np.argsort(-rewards, kind="stable")  # NaN sorts last
        ranks = np.empty(len(rewards), dtype=np.int64)
        ranks[order] = np.arange(1, len(rewards) + 1)
        return ranks.tolist(), rewards.tolist()
