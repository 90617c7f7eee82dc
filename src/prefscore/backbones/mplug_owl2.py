"""mPLUG-Owl2 (the model of Q-Align / OneAlign) in plain torch, read from the official files.

The official checkpoints (``q-future/one-align``, ``q-future/q-align-*``) ship remote code written for
transformers 4.36. This module runs the same network natively, so they score on any transformers
(only the tokenizer comes from transformers). The architecture, from ``Q-Future/Q-Align@14dfdff``
``q_align/model/``:

* **Vision encoder** (``visual_encoder.py``): a ViT. ``patch_embed`` Conv2d without bias, a
  prepended ``cls_token``, ``position_embedding`` added (first ``N + 1`` rows, no interpolation),
  ``pre_layernorm``; per layer: LayerNorm, fused ``query_key_value`` laid out per head as (q, k, v),
  softmax attention, ``dense``, residual; LayerNorm, ``fc1``, QuickGELU (hard-coded; the config's
  ``hidden_act`` is not read), ``fc2``, residual; ``post_layernorm`` on every token. All LayerNorms
  use the config's ``layer_norm_eps``.
* **Visual abstractor**: learnable queries cross-attend to ``[norm1(queries), normk(vision)]``
  with the stored sin-cos position tables ``q_pos_embed`` / ``k_pos_embed`` (persistent buffers,
  used as stored: bfloat16 in the published files) added to the query and key inputs; the residual
  starts from the *normalised* queries; a SwiGLU MLP with an inner LayerNorm (``ffn_ln``). ``norm1``,
  ``normk`` and ``norm2`` are ``nn.LayerNorm`` with the default eps 1e-5; ``ffn_ln`` uses the
  config's. Then ``visual_fc`` to the LLM width and ``vit_eos`` appended: ``queries + 1`` tokens per
  image.
* **Modality-adaptive LLaMA-2** (``modeling_llama2.py``): ``input_layernorm``,
  ``post_attention_layernorm``, ``k_proj`` and ``v_proj`` have a text copy (``multiway.0``) and an
  image copy (``multiway.1``), chosen per token; ``q_proj``, ``o_proj`` and the SiLU-gated MLP are
  shared. RMSNorm in float32, rotate-half RoPE over positions ``0..L-1``, causal attention.
* **Assembly** (``modeling_mplug_owl2.py``): the ``-200`` slot of the prompt is replaced by the
  image tokens (a video: those of all its frames, frame after frame); modality 1 for each of
  them (``vit_eos`` included), 0 for text.

Attention runs through ``scaled_dot_product_attention`` (the sequences here are never padded, so
the causal flag is the whole mask); the official eager code computes the same function. Every
size comes from ``config.json``; keys it does not use are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ModelSourceError

IMAGE_TOKEN_INDEX = -200
TEXT, IMAGE = 0, 1


# -- configuration ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Owl2TextConfig:
    """The LLaMA-2 fields of ``config.json`` (defaults: those of Q-Align's ``LlamaConfig``)."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[str, float] | None = None  # ("linear" | "dynamic", factor)
    max_position_embeddings: int = 2048
    attention_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class Owl2VisionConfig:
    """``visual_config["visual_model"]`` (defaults: ``MplugOwlVisionConfig``, ViT-L/14 at 448 px)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 448
    patch_size: int = 14
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class Owl2AbstractorConfig:
    """``visual_config["visual_abstractor"]`` (defaults: ``MplugOwlVisualAbstractorConfig``)."""

    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    num_learnable_queries: int = 64
    encoder_hidden_size: int = 1024
    grid_size: int = 32
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class Owl2Config:
    text: Owl2TextConfig
    vision: Owl2VisionConfig
    abstractor: Owl2AbstractorConfig

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> "Owl2Config":
        """Read a ``config.json`` dict as ``MPLUGOwl2Config`` does; unknown keys are ignored."""
        heads = int(cfg.get("num_attention_heads", 32))
        kv = cfg.get("num_key_value_heads")
        scaling = cfg.get("rope_scaling")
        if scaling is not None:
            kind = scaling.get("type", scaling.get("rope_type"))
            if kind not in ("linear", "dynamic"):
                raise CheckpointError(f"unsupported rope_scaling {scaling!r} (Q-Align's LLaMA knows 'linear' and 'dynamic')")
            scaling = (kind, float(scaling["factor"]))
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"unsupported LLaMA hidden_act {act!r} (mPLUG-Owl2 uses 'silu')")
        text = Owl2TextConfig(
            vocab_size=int(cfg.get("vocab_size", 32000)),
            hidden_size=int(cfg.get("hidden_size", 4096)),
            intermediate_size=int(cfg.get("intermediate_size", 11008)),
            num_hidden_layers=int(cfg.get("num_hidden_layers", 32)),
            num_attention_heads=heads,
            num_key_value_heads=int(kv) if kv is not None else heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=scaling,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            attention_bias=bool(cfg.get("attention_bias", False)),
        )
        visual = cfg.get("visual_config") or {}
        return cls(text, _pick(Owl2VisionConfig, visual.get("visual_model") or {}),
                   _pick(Owl2AbstractorConfig, visual.get("visual_abstractor") or {}))

    @classmethod
    def from_file(cls, path: Path) -> "Owl2Config":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise ModelSourceError(f"{path}: cannot read the mPLUG-Owl2 config: {exc}") from None

    def parameter_count(self) -> dict[str, int]:
        """Parameters per part (what the checkpoint holds besides the two sin-cos tables per
        abstractor layer), counted on a model built on the meta device (no memory used)."""
        with torch.device("meta"):
            model = Owl2ForScoring(self)
        parts = {"language_model": 0, "vision_encoder": 0, "visual_abstractor": 0}
        for name, p in model.named_parameters():
            part = ("vision_encoder" if ".vision_model." in f".{name}" else
                    "visual_abstractor" if ".visual_abstractor." in f".{name}" else "language_model")
            parts[part] += p.numel()
        parts["total"] = sum(parts.values())
        return parts


def _pick(kind, values: Mapping[str, Any]):
    fields = kind.__dataclass_fields__
    kwargs = {}
    for name, spec in fields.items():
        if values.get(name) is not None:
            kwargs[name] = type(spec.default)(values[name])
    return kind(**kwargs)


# -- building blocks ------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaMA's RMSNorm: statistics in float32, the weight applied in the input dtype."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


@dataclass
class Layout:
    """Which positions of the (shared) sequence layout are text and which are image tokens."""

    modality: torch.Tensor  # (L,) long, 0 text / 1 image
    positions: tuple[torch.Tensor, torch.Tensor]  # indices of the text and of the image positions

    @classmethod
    def of(cls, modality: torch.Tensor) -> "Layout":
        return cls(modality, (torch.nonzero(modality == TEXT).flatten(), torch.nonzero(modality == IMAGE).flatten()))

    def to(self, device: torch.device) -> "Layout":
        if self.modality.device == device:
            return self
        return Layout(self.modality.to(device), tuple(p.to(device) for p in self.positions))


class MultiwayRMSNorm(nn.Module):
    """``MultiwayNetwork`` of two RMSNorms: the weight of each token's modality."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.multiway = nn.ModuleList([RMSNorm(size, eps), RMSNorm(size, eps)])
        self.eps = eps

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        weight = torch.stack([self.multiway[TEXT].weight, self.multiway[IMAGE].weight])[layout.modality]
        return rms_norm(x, weight, self.eps)


class MultiwayLinear(nn.Module):
    """``MultiwayNetwork`` of two Linears: each projection runs only on its own modality's tokens."""

    def __init__(self, inputs: int, outputs: int, bias: bool):
        super().__init__()
        self.multiway = nn.ModuleList([nn.Linear(inputs, outputs, bias=bias), nn.Linear(inputs, outputs, bias=bias)])
        self.out_features = outputs

    def forward(self, x: torch.Tensor, layout: Layout) -> torch.Tensor:
        out = x.new_empty(*x.shape[:-1], self.out_features)
        for way, index in zip(self.multiway, layout.positions):
            if index.numel():
                out.index_copy_(1, index, way(x.index_select(1, index)))
        return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_tables(cfg: Owl2TextConfig, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of positions ``0..length-1`` as transformers 4.36's LLaMA rotary classes: computed in
    float32 and cast to the model dtype; "linear" scaling divides the positions, "dynamic" (NTK)
    raises the base once the sequence is longer than ``max_position_embeddings``."""
    dim, base = cfg.head_dim, cfg.rope_theta
    positions = torch.arange(length, device=device, dtype=torch.float32)
    if cfg.rope_scaling is not None:
        kind, factor = cfg.rope_scaling
        if kind == "linear":
            positions = positions / factor
        elif length > cfg.max_position_embeddings:
            base = base * ((factor * length / cfg.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


# -- LLaMA-2, modality-adaptive -------------------------------------------------------------------
class Owl2Attention(nn.Module):
    def __init__(self, cfg: Owl2TextConfig):
        super().__init__()
        self.cfg = cfg
        kv = cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = MultiwayLinear(cfg.hidden_size, kv, cfg.attention_bias)
        self.v_proj = MultiwayLinear(cfg.hidden_size, kv, cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.attention_bias)

    def forward(self, x: torch.Tensor, layout: Layout, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads, kv_heads, hd = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        q = self.q_proj(x).view(b, n, heads, hd).transpose(1, 2)
        k = self.k_proj(x, layout).view(b, n, kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x, layout).view(b, n, kv_heads, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv_heads != heads:  # repeat_kv
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, heads * hd))


class Owl2MLP(nn.Module):
    def __init__(self, cfg: Owl2TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Owl2DecoderLayer(nn.Module):
    def __init__(self, cfg: Owl2TextConfig):
        super().__init__()
        self.input_layernorm = MultiwayRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Owl2Attention(cfg)
        self.post_attention_layernorm = MultiwayRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Owl2MLP(cfg)

    def forward(self, x: torch.Tensor, layout: Layout, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x, layout), layout, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x, layout))


# -- vision encoder -------------------------------------------------------------------------------
class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        # three input channels whatever num_channels says, as the official module
        self.patch_embed = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(1, patches + 1, cfg.hidden_size))
        self.pre_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(len(pixels), 1, -1).to(patches.dtype)
        x = torch.cat([cls, patches], dim=1)
        if x.shape[1] > self.position_embedding.shape[1]:
            raise CheckpointError(f"images of {pixels.shape[-1]} px give {x.shape[1] - 1} patches, but the vision "
                                  f"encoder has {self.position_embedding.shape[1] - 1} position embeddings")
        x = x + self.position_embedding[:, : x.shape[1]].to(patches.dtype)
        return self.pre_layernorm(x)


class VisionAttention(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query_key_value = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.query_key_value(x).reshape(b, n, self.heads, 3, d // self.heads).permute(3, 0, 2, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.dense(out.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # QuickGELU, whatever hidden_act says


class VisionLayer(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = VisionAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.self_attn(self.input_layernorm(x)) + x
        return self.mlp(self.post_attention_layernorm(x)) + x


class VisionEncoder(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(VisionLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisionModel(nn.Module):
    def __init__(self, cfg: Owl2VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` pixels -> ``(B, N + 1, D)`` tokens (CLS first), all post-normalised."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


# -- visual abstractor ----------------------------------------------------------------------------
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """``get_1d_sincos_pos_embed_from_grid`` of the official code (MAE's), in float32 numpy."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    """``get_2d_sincos_pos_embed(dim, grid, cls_token=True)``: a zero row, then the grid (w first)."""
    g = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(g, g), axis=0).reshape(2, 1, grid, grid)
    emb = np.concatenate([sincos_1d(dim // 2, mesh[0]), sincos_1d(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


class AbstractorAttentionCore(nn.Module):
    """``MplugOwlVisualAbstractorMultiHeadAttention``: q/k/v projections and the two position tables."""

    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.encoder_hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.encoder_hidden_size, cfg.hidden_size)
        self.register_buffer("q_pos_embed", torch.zeros(cfg.num_learnable_queries, cfg.hidden_size))
        self.register_buffer("k_pos_embed", torch.zeros(cfg.grid_size**2 + 1, cfg.hidden_size))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        b, nq, d = queries.shape
        n = keys.shape[1]
        pos = torch.cat([self.q_pos_embed, self.k_pos_embed]).unsqueeze(0).to(queries.dtype)
        if pos.shape[1] != n:
            raise CheckpointError(f"the visual abstractor's position tables cover {pos.shape[1] - nq - 1} vision patches "
                                  f"(grid_size {math.isqrt(pos.shape[1] - nq - 1)}), but the vision encoder gives {n - nq - 1}")
        k = self.key(keys + pos).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        v = self.value(keys).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        q = self.query(queries + self.q_pos_embed.unsqueeze(0).to(queries.dtype)).view(b, nq, self.heads, -1).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, nq, d)


class AbstractorMLP(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.ffn_ln = nn.LayerNorm(cfg.intermediate_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class AbstractorOutput(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size)  # default eps 1e-5, as the official module
        self.mlp = AbstractorMLP(cfg)


class AbstractorCrossAttention(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.attention = AbstractorAttentionCore(cfg)
        self.output = AbstractorOutput(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size)  # default eps 1e-5
        self.normk = nn.LayerNorm(cfg.hidden_size)  # default eps 1e-5

    def forward(self, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        h = self.norm1(queries)
        keys = torch.cat([h, self.normk(vision)], dim=1)
        y = h + self.output.out_proj(self.attention(h, keys))  # residual from the normalised queries
        return y + self.output.mlp(self.output.norm2(y))


class AbstractorLayer(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.crossattention = AbstractorCrossAttention(cfg)


class AbstractorEncoder(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig):
        super().__init__()
        self.layers = nn.ModuleList(AbstractorLayer(cfg) for _ in range(cfg.num_hidden_layers))


class VisualAbstractor(nn.Module):
    def __init__(self, cfg: Owl2AbstractorConfig, text_hidden: int):
        super().__init__()
        self.encoder = AbstractorEncoder(cfg)
        self.visual_fc = nn.Linear(cfg.hidden_size, text_hidden)
        self.query_embeds = nn.Parameter(torch.zeros(1, cfg.num_learnable_queries, cfg.hidden_size))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, text_hidden))

    def forward(self, vision: torch.Tensor) -> torch.Tensor:
        """``(B, N + 1, D)`` vision tokens -> ``(B, queries + 1, text_hidden)`` image tokens."""
        x = self.query_embeds.repeat(len(vision), 1, 1)
        for layer in self.encoder.layers:
            x = layer.crossattention(x, vision)
        x = self.visual_fc(x)
        return torch.cat([x, self.vit_eos.repeat(len(x), 1, 1)], dim=1)


# -- the whole model --------------------------------------------------------------------------------
class Owl2Model(nn.Module):
    """``MPLUGOwl2LlamaModel``: parameter names equal the checkpoint's (after ``model.``)."""

    def __init__(self, config: Owl2Config):
        super().__init__()
        t = config.text
        self.embed_tokens = nn.Embedding(t.vocab_size, t.hidden_size)
        self.layers = nn.ModuleList(Owl2DecoderLayer(t) for _ in range(t.num_hidden_layers))
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.vision_model = VisionModel(config.vision)
        self.visual_abstractor = VisualAbstractor(config.abstractor, t.hidden_size)


class Owl2ForScoring(nn.Module):
    """``MPLUGOwl2LlamaForCausalLM`` for scoring: next-token logits at the last prompt position.

    Build it with :func:`load_owl2` (weights, dtype and devices); :meth:`next_token_logits` takes a
    prompt with one ``IMAGE_TOKEN_INDEX`` slot and the pixels of each sample's frames.
    """

    def __init__(self, config: Owl2Config):
        super().__init__()
        self.config = config
        self.model = Owl2Model(config)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def vision_device(self) -> torch.device:
        return self.model.vision_model.embeddings.patch_embed.weight.device

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(F, 3, S, S)`` normalised pixels -> ``(F, queries + 1, hidden)`` LLM input tokens."""
        m = self.model
        vision = m.vision_model(pixels.to(self.vision_device, self.dtype))
        abstractor = m.visual_abstractor.visual_fc.weight.device
        return m.visual_abstractor(vision.to(abstractor))

    def next_token_logits(self, input_ids: torch.Tensor, pixels: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """Logits ``(B, vocab)`` (float32) of the token after the prompt.

        ``input_ids``: ``(L,)`` prompt ids shared by every sample, with exactly one
        ``IMAGE_TOKEN_INDEX``. ``pixels``: ``(B * frames, 3, S, S)``; the image tokens of sample
        ``i``'s ``frames`` frames, one after the other, fill its slot. Equal layouts, so no padding.
        """
        slot = torch.nonzero(input_ids == IMAGE_TOKEN_INDEX).flatten()
        if slot.numel() != 1:
            raise ValueError(f"the prompt must hold exactly one image slot ({IMAGE_TOKEN_INDEX}), found {slot.numel()}")
        if len(pixels) % frames:
            raise ValueError(f"{len(pixels)} frames do not split into samples of {frames}")
        s = int(slot)
        m = self.model
        feats = self.image_tokens(pixels)
        b = len(pixels) // frames
        feats = feats.reshape(b, frames * feats.shape[1], feats.shape[2])
        embed = m.embed_tokens.weight.device
        ids = input_ids.to(embed)
        before = m.embed_tokens(ids[:s]).unsqueeze(0).expand(b, -1, -1)
        after = m.embed_tokens(ids[s + 1 :]).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([before, feats.to(embed, before.dtype), after], dim=1)
        n = x.shape[1]
        modality = torch.zeros(n, dtype=torch.long)
        modality[s : s + feats.shape[1]] = IMAGE
        layout = Layout.of(modality)
        tables: dict[torch.device, tuple[Layout, torch.Tensor, torch.Tensor]] = {}
        for layer in m.layers:
            device = layer.mlp.down_proj.weight.device
            if device not in tables:
                cos, sin = rope_tables(self.config.text, n, device, self.dtype)
                tables[device] = (layout.to(device), cos, sin)
            lay, cos, sin = tables[device]
            x = layer(x.to(device), lay, cos, sin)
        last = x[:, -1:].to(m.norm.weight.device)
        h = m.norm(last)
        return self.lm_head(h.to(self.lm_head.weight.device))[:, 0].float()


# -- loading --------------------------------------------------------------------------------------
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # written by older transformers; recomputed here


def weight_files(directory: Path) -> list[Path]:
    """The weight files of an HF model directory: the shards of an index, or a single file."""
    for name in WEIGHT_INDEXES:
        index = directory / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as exc:
                raise ModelSourceError(f"{index}: cannot read the shard index: {exc}") from None
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise ModelSourceError(f"{directory}: shard(s) named in {name} are missing: {', '.join(missing)}")
            return [directory / s for s in shards]
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    raise ModelSourceError(f"{directory}: no weights (looked for {', '.join(WEIGHT_INDEXES + WEIGHT_FILES)})")


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one safetensors file or torch.save archive (``weights_only``), one at a time."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
        return
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # an old (non-zip) archive cannot be memory-mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: not a state dict (a {type(state).__name__})")
    yield from state.items()


def plan_devices(model: Owl2ForScoring, device: torch.device, device_map) -> dict[str, torch.device]:
    """Device of every parameter/buffer name. ``device_map``: None (all on ``device``), ``"auto"``
    (the LLM layers split evenly over the visible GPUs; vision, abstractor and embeddings on the
    first, final norm and ``lm_head`` on the last), or a dict from module-name prefixes (the
    checkpoint's names, ``""`` for the rest) to devices, as accelerate's."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    if device_map is None:
        return {n: device for n in names}
    if device_map == "auto":
        gpus = torch.cuda.device_count()
        if gpus < 2:
            target = torch.device("cuda:0") if gpus else device
            return {n: target for n in names}
        layers = model.config.text.num_hidden_layers
        device_map = {"": "cuda:0", "model.norm": f"cuda:{gpus - 1}", "lm_head": f"cuda:{gpus - 1}"}
        for i in range(layers):
            device_map[f"model.layers.{i}"] = f"cuda:{min(gpus - 1, i * gpus // layers)}"
    if not isinstance(device_map, Mapping):
        raise ValueError(f"device_map must be None, 'auto' or a dict of module name -> device, not {device_map!r}")
    out = {}
    for n in names:
        best = None
        for prefix in device_map:
            if prefix == "" or n == prefix or n.startswith(prefix + "."):
                if best is None or len(prefix) > len(best):
                    best = prefix
        if best is None:
            raise ValueError(f"device_map places no module holding {n!r} (add a '' entry for the rest)")
        target = device_map[best]
        if target == "disk":
            raise ValueError("device_map 'disk' offload is not supported by the native mPLUG-Owl2; use 'cpu'")
        out[n] = torch.device(f"cuda:{target}" if isinstance(target, int) else target)
    return out


def load_owl2(directory: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              device_map=None) -> Owl2ForScoring:
    """Build the model from ``config.json`` and the weight shards of ``directory``.

    Tensors are cast to ``dtype`` and placed on their device shard by shard (the model is never
    materialised twice). Checkpoint tensors the model does not have are ignored; a tensor of the
    wrong shape or a missing one raises :class:`CheckpointError`. Missing sin-cos tables of the
    abstractor are computed as the official ``__init__`` does (float32).
    """
    directory = Path(directory)
    config = Owl2Config.from_file(directory / "config.json")
    with torch.device("meta"):
        model = Owl2ForScoring(config)
    placement = plan_devices(model, torch.device(device), device_map)
    expected = {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    loaded: set[str] = set()
    for path in weight_files(directory):
        try:
            for key, tensor in read_tensors(path):
                if key not in expected:
                    continue
                want = tuple(expected[key].shape)
                if tuple(tensor.shape) != want:
                    raise CheckpointError(f"{path.name}: tensor {key} has shape {tuple(tensor.shape)}, but config.json "
                                          f"implies {want}: the config does not describe these weights")
                _assign(model, key, tensor.to(device=placement[key], dtype=dtype if tensor.is_floating_point() else None))
                loaded.add(key)
        except (OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, (CheckpointError, ModelSourceError)):
                raise
            raise ModelSourceError(f"{path}: cannot read the weights: {exc}") from None
    a = config.abstractor
    for key in sorted(set(expected) - loaded):
        if key.endswith("attention.q_pos_embed"):
            table = sincos_1d(a.hidden_size, np.arange(a.num_learnable_queries, dtype=np.float32))
        elif key.endswith("attention.k_pos_embed"):
            table = sincos_2d(a.hidden_size, a.grid_size)
        else:
            continue
        _assign(model, key, torch.from_numpy(table).float().to(device=placement[key], dtype=dtype))
        loaded.add(key)
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{directory}: the checkpoint lacks {len(missing)} tensor(s) of mPLUG-Owl2: {shown}")
    return model.eval().requires_grad_(False)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[leaf] = tensor
