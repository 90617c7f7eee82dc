"""MPS (Multi-dimensional Preference Score, CVPR 2024): the overall-preference model of Kwai-Kolors/MPS.

A CLIP ViT-H-14 (transformers ``CLIPModel``) plus a condition-aware cross-attention
(``trainer/models/clip_model.py`` and ``trainer/models/cross_modeling.py`` of the official code):

1. prompt and *condition* are tokenised to 77 ids (``padding="max_length"``, truncated) and run
   through the text tower **without an attention mask**; every token's final-layer-normed state is
   projected (``text_projection``), and the prompt's first ``<|endoftext|>`` (``argmax`` of the ids)
   gives the prompt feature;
2. the image's 257 encoder tokens (before ``post_layernorm``) are projected (``visual_projection``);
3. per prompt token, the largest dot product with any condition token, divided by the largest of
   these over the prompt; tokens with a value <= 0.01 are masked out of the cross-attention;
4. ``Cross_model`` (layers of pre-norm cross-attention image -> prompt tokens with a parallel SwiGLU
   feed-forward, then a parallel self-attention + SwiGLU block with rotary positions) on the image
   tokens; its first token is the image feature;
5. score = ``exp(logit_scale) * cos(prompt feature, image feature)``; ``compare`` is the README's
   softmax over the candidates.

The official README runs the image tower in float16 (``image_inputs.half()`` on a CUDA model);
prefscore's parity setting is float32 throughout (``dtype="float16"`` runs the whole model in half).

Model source: a local directory holding the published ``MPS_overall_checkpoint.pth`` (a pickle of the
whole model object, released on Google Drive; no hub mirror) or a plain state dict of it
(``.pth``/``.bin``/``.safetensors``, the keys of the official model's ``state_dict()``), plus
optionally the processor files of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (else fetched from that
repo). The pickle is never executed: :func:`read_mps_checkpoint` reads it with torch's
``weights_only`` unpickler in which the model classes are inert stand-ins, and refuses any other
global.
"""

from __future__ import annotations

import _compat_pickle
import json
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import hub
from ..backbones.clip import check_fit, count_layers, load_into
from ..backbones.loading import has_processor, load_clip_processor
from ..base import HFProcessorInput, Metric
from ..errors import CheckpointError, ModelSourceError
from .similarity import l2_normalize

PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CHECKPOINT_NAMES = ("MPS_overall_checkpoint.pth", "MPS_overall_checkpoint.safetensors", "model.safetensors",
                    "pytorch_model.bin")
#: The README's condition for the overall preference.
OVERALL_CONDITION = ("light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, "
                     "structure, instance, texture, quantity, attributes, position, number, location, word, things.")
MASK_THRESHOLD = 0.01
DOWNLOAD_HINT = ("the MPS checkpoint is published on Google Drive only (link in the Kwai-Kolors/MPS README: "
                 "'MPS_overall_checkpoint.pth'): download it and pass the directory holding it as the model "
                 "(`--model DIR`, `model=DIR`)")


# --------------------------------------------------------------------------------------------------
# The condition-aware cross model (same parameter names as the official Cross_model)
# --------------------------------------------------------------------------------------------------

class _NormNoBias(nn.Module):
    """LayerNorm with a weight parameter and a bias *buffer* (the official ``LayerNorm``), eps 1e-5."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


def _swiglu(x: torch.Tensor) -> torch.Tensor:
    x, gate = x.chunk(2, dim=-1)
    return F.silu(gate) * x


class _SwiGLU(nn.Module):
    def forward(self, x):
        return _swiglu(x)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Multi-query attention as the official code: one key/value head shared by all query heads."""
    sim = q @ k.unsqueeze(1).transpose(-1, -2)  # (b, h, i, j)
    if bias is not None:
        sim = sim + bias
    sim = sim - sim.amax(dim=-1, keepdim=True)
    return sim.softmax(dim=-1) @ v.unsqueeze(1)


class _CrossAttention(nn.Module):
    """Pre-norm cross-attention (queries: image tokens, keys/values: prompt tokens) + parallel SwiGLU."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = _NormNoBias(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(nn.Linear(dim, ff_inner * 2, bias=False), _SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def forward(self, x, context, bias):
        b, n, _ = x.shape
        h = self.norm(x)
        q = self.to_q(h).view(b, n, self.heads, -1).transpose(1, 2) * self.scale
        k, v = self.to_kv(context).chunk(2, dim=-1)
        out = _attend(q, k, v, bias).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out) + self.ff(h)


class _ParallelBlock(nn.Module):
    """Pre-norm parallel self-attention (rotary positions, multi-query) + SwiGLU feed-forward."""

    def __init__(self, dim: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = _NormNoBias(dim)
        self.fused_dims = (heads * dim_head, dim_head, dim_head, ff_inner * 2)
        self.rotary_emb = nn.Module()
        self.rotary_emb.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)))
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff_out = nn.Sequential(_SwiGLU(), nn.Linear(ff_inner, dim, bias=False))

    def rotary(self, n: int) -> torch.Tensor:
        """Rotary angles ``(n, dim_head)``: the table cached in the checkpoint when it is long enough
        (as the official ``get_rotary_embedding``), else computed in the dtype of ``inv_freq``."""
        cached = getattr(self, "pos_emb", None)
        if cached is not None and cached.shape[-2] >= n:
            return cached[:n]
        inv_freq = self.rotary_emb.inv_freq
        freqs = torch.arange(n, device=inv_freq.device, dtype=inv_freq.dtype)[:, None] * inv_freq[None, :]
        return torch.cat((freqs, freqs), dim=-1)

    def forward(self, x):
        b, n, _ = x.shape
        h = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(h).split(self.fused_dims, dim=-1)
        q = q.view(b, n, self.heads, -1).transpose(1, 2)
        pos = self.rotary(n)
        cos, sin = pos.cos(), pos.sin()
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = _attend(q * self.scale, k, v, None).transpose(1, 2).reshape(b, n, -1)
        return self.attn_out(out) + self.ff_out(ff)


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(x, *args) + x


class CrossModel(nn.Module):
    """The official ``Cross_model``: ``layers[i] = [Residual(CrossAttention), Residual(ParallelTransformerBlock)]``.

    ``forward(image_tokens (B, N, d), text_tokens (B, T, d), bias (B, T))`` with ``bias`` 0 or -inf
    per prompt token; returns ``(B, N, d)``.
    """

    def __init__(self, dim: int, layers: int, dim_head: int, heads: int, ff_inner: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([_Residual(_CrossAttention(dim, dim_head, heads, ff_inner)),
                           _Residual(_ParallelBlock(dim, dim_head, heads, ff_inner))])
            for _ in range(layers)
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str) -> "CrossModel":
        """Sizes read off the tensors (``sd`` with keys relative to ``cross_model.``)."""
        layers = count_layers(sd, "layers.")
        key = "layers.0.0.fn."
        if not layers or key + "to_q.weight" not in sd or key + "to_kv.weight" not in sd or key + "ff.2.weight" not in sd:
            raise CheckpointError(f"{source}: no MPS cross model ('cross_model.layers.0.0.fn.to_q.weight' and co. missing)")
        inner, dim = sd[key + "to_q.weight"].shape
        dim_head = sd[key + "to_kv.weight"].shape[0] // 2
        if dim_head < 1 or inner % dim_head:
            raise CheckpointError(f"{source}: cross model query width {inner} is not a multiple of its head width {dim_head}")
        return cls(dim, layers, dim_head, inner // dim_head, sd[key + "ff.2.weight"].shape[1])

    def forward(self, image_tokens, text_tokens, bias):
        bias = bias[:, None, None, :]  # (B, 1 head, 1 query, T)
        x = image_tokens
        for cross, block in self.layers:
            x = block(cross(x, text_tokens, bias))
        return x


def condition_bias(text_tokens: torch.Tensor, condition_tokens: torch.Tensor) -> torch.Tensor:
    """Per prompt token: 0 if its similarity to the condition (max over condition tokens of the dot
    product, divided by the largest such value over the prompt) exceeds 0.01, else -inf. ``(B, T)``."""
    sim = torch.einsum("bid,jd->bji", text_tokens, condition_tokens).amax(dim=1)
    sim = sim / sim.amax(dim=-1, keepdim=True)
    return torch.where(sim > MASK_THRESHOLD, 0.0, float("-inf")).to(text_tokens.dtype)


# --------------------------------------------------------------------------------------------------
# Reading the published checkpoint without executing it
# --------------------------------------------------------------------------------------------------

#: Globals of the published pickle that become inert stand-ins: the MPS model classes, transformers'
#: CLIP classes and configs, torch.nn modules and the functions they hold as attributes (e.g. gelu).
STUB_PREFIXES = ("trainer.models.", "transformers.", "torch.nn.modules.", "torch.nn.functional.", "torch._C._nn.")


class _Stub:
    """Inert stand-in for a class named in the pickle: records the state the pickle sets, runs nothing."""

    path = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        self.__dict__.update(state or {})
        self.__dict__.update(slots or {})


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` a pickle refers to (GLOBAL and STACK_GLOBAL), without unpickling it.

    STACK_GLOBAL (protocol >= 4) takes its names from the two values pushed before it, directly or from
    the memo; the scan follows pushed strings and memo entries for that. (It only decides which names
    get stand-ins: torch's ``weights_only`` unpickler still refuses any global that was not allowed.)
    """
    found: list[str] = []
    memo: dict[int, str | None] = {}
    pushed: list[str | None] = []  # what each push left on the stack: a string, or None for anything else
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":  # protocol <= 2 writes Python 2 names (``__builtin__ set``): map them as pickle does
            module, qual = arg.split(" ", 1)
            module, qual = _compat_pickle.NAME_MAPPING.get((module, qual), (module, qual))
            found.append(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{qual}")
            pushed.append(None)
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name == "STACK_GLOBAL":
            if len(pushed) < 2 or not all(isinstance(x, str) for x in pushed[-2:]):
                raise CheckpointError("cannot follow a STACK_GLOBAL in the checkpoint's pickle")
            found.append(f"{pushed[-2]}.{pushed[-1]}")
            pushed.append(None)
        else:
            pushed.append(None)
    return found


def _torch_allows(path: str) -> bool:
    from torch import _weights_only_unpickler as wou

    if path in wou._get_allowed_globals():
        return True
    return any(f"{f.__module__}.{f.__qualname__}" == path for f in wou._tensor_rebuild_functions())


def _unpickle_model(path: Path):
    """``torch.load`` of a whole-model pickle with every model class replaced by an inert stand-in."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise CheckpointError(f"{path}: not a torch.save archive (no single data.pkl)")
            data = archive.read(names[0])
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch.save zip archive (legacy or corrupt file); {DOWNLOAD_HINT}") from None
    stubs = {}
    for name in dict.fromkeys(pickle_globals(data)):
        if name.startswith(STUB_PREFIXES):
            stubs[name] = type(name.rsplit(".", 1)[-1], (_Stub,), {"path": name})
        elif not _torch_allows(name):
            raise CheckpointError(
                f"{path}: refusing to load this checkpoint: its pickle refers to '{name}', which is not part of an "
                f"MPS model. prefscore reads the published pickle without executing it and accepts only torch "
                f"tensors, the MPS model classes and transformers' CLIP classes"
            )
    try:
        with torch.serialization.safe_globals([(cls, name) for name, cls in stubs.items()]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # the weights_only unpickler's own refusals, truncated archives
        raise CheckpointError(f"{path}: refusing to load this checkpoint: {exc}") from None


def _module_state(module, prefix: str, out: dict) -> None:
    d = module.__dict__ if isinstance(module, _Stub) else {}
    skip = (d.get("_non_persistent_buffers_set") or set()) - {"pos_emb"}  # the cached rotary table is used if present
    for kind in ("_parameters", "_buffers"):
        for name, value in (d.get(kind) or {}).items():
            if isinstance(value, torch.Tensor) and not (kind == "_buffers" and name in skip):
                out[prefix + name] = value.detach()
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            _module_state(child, f"{prefix}{name}.", out)


TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings",
             "vocab_size", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id", "projection_dim")
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
               "num_channels", "hidden_act", "layer_norm_eps", "projection_dim")


def _config_fields(obj, keys) -> dict:
    d = obj if isinstance(obj, Mapping) else getattr(obj, "__dict__", {})
    return {k: d[k] for k in keys if k in d and isinstance(d[k], (int, float, str))}


def clip_config_dict(cfg) -> dict:
    """The architecture fields of a (pickled or JSON) ``CLIPConfig``."""
    d = cfg if isinstance(cfg, Mapping) else getattr(cfg, "__dict__", {})
    out = {"text_config": _config_fields(d.get("text_config") or {}, TEXT_KEYS),
           "vision_config": _config_fields(d.get("vision_config") or {}, VISION_KEYS)}
    if isinstance(d.get("projection_dim"), int):
        out["projection_dim"] = d["projection_dim"]
    return out


def read_mps_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state dict with the official model's keys, CLIP config dict or None)`` of an MPS checkpoint.

    Accepts the published whole-model pickle (read with inert stand-ins, see :func:`_unpickle_model`;
    the config comes from the pickled ``CLIPConfig``), or a plain state dict (``torch.save`` /
    safetensors) with the keys ``model.*`` (CLIP) and ``cross_model.*``; then the config is None.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path))), None
    obj = _unpickle_model(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
        state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        return state, None
    if not isinstance(obj, _Stub) or not obj.path.endswith(".CLIPModel"):
        raise CheckpointError(f"{path}: expected the MPS model (trainer.models.clip_model.CLIPModel) or a state dict, "
                              f"found {getattr(obj, 'path', type(obj).__name__)}")
    modules = obj.__dict__.get("_modules") or {}
    if "model" not in modules or "cross_model" not in modules:
        raise CheckpointError(f"{path}: the pickled {obj.path} has no 'model' and 'cross_model'; not an MPS checkpoint")
    state: dict[str, torch.Tensor] = {}
    _module_state(obj, "", state)
    config = modules["model"].__dict__.get("config") if isinstance(modules["model"], _Stub) else None
    return state, (clip_config_dict(config) if config is not None else None)


def convert_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Write the tensors of an MPS checkpoint as ``MPS_overall_checkpoint.safetensors`` in ``out_dir``
    (the official ``state_dict()`` keys plus the cached rotary tables ``*.fn.pos_emb``), and the
    CLIP architecture of a pickled checkpoint as ``config.json``. Returns the safetensors path."""
    from safetensors.torch import save_file

    state, config = read_mps_checkpoint(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "MPS_overall_checkpoint.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    if config is not None:
        (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return target


# --------------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------------

def _build_clip(state: dict, config: dict, source: str, dtype: torch.dtype):
    from transformers import CLIPConfig, CLIPModel

    if not config.get("text_config") or not config.get("vision_config"):
        raise CheckpointError(f"{source}: no CLIP config (text_config/vision_config) for the MPS backbone")
    projection = config.get("projection_dim", config["text_config"].get("projection_dim", 512))
    cfg = CLIPConfig(text_config=config["text_config"], vision_config=config["vision_config"], projection_dim=projection)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = CLIPModel(cfg)
    return load_into(model, state, source, dtype)


class MPS(HFProcessorInput, Metric):
    """MPS overall preference: ``exp(logit_scale) * cos`` (compare within a prompt; softmax = preference)."""

    def __init__(self, spec, source: str, device="cpu", dtype="float32", processor: str | None = None,
                 condition: str = OVERALL_CONDITION, checkpoint: str | None = None):
        super().__init__(device, dtype)
        self.spec = spec
        if source == spec.default_model:
            raise ModelSourceError(f"no default download for MPS: {DOWNLOAD_HINT}")
        ckpt_dir = source  # a local directory, or a hub repo holding the same files
        ckpt = hub.find_file(ckpt_dir, [checkpoint] if checkpoint else CHECKPOINT_NAMES, what="MPS checkpoint")
        state, config = read_mps_checkpoint(ckpt)
        if processor is None:
            processor = ckpt_dir if hub.is_local(ckpt_dir) and has_processor(Path(ckpt_dir)) else PROCESSOR_REPO
        if config is None:  # plain state dict: the CLIP config of the model directory, else of the base CLIP-H
            config_source = ckpt_dir if hub.is_local(ckpt_dir) and (Path(ckpt_dir) / "config.json").is_file() else processor
            config = clip_config_dict(json.loads(hub.find_file(config_source, ["config.json"], what="CLIP config").read_text()))
        clip_state = {k[6:]: v for k, v in state.items() if k.startswith("model.") and not k.endswith("position_ids")}
        cross_state = {k[12:]: v for k, v in state.items() if k.startswith("cross_model.")}
        unknown = [k for k in state if not k.startswith(("model.", "cross_model."))]
        if unknown:
            raise CheckpointError(f"{ckpt}: unexpected tensors {unknown[:5]} (an MPS state dict has model.* and cross_model.*)")
        self.clip = _build_clip(clip_state, config, str(ckpt), self.dtype).to(self.device)
        self.cross = CrossModel.from_state_dict(cross_state, str(ckpt))
        if self.cross.layers[0][0].fn.to_q.in_features != self.clip.config.projection_dim:
            raise CheckpointError(f"{ckpt}: cross model width {self.cross.layers[0][0].fn.to_q.in_features} differs from "
                                  f"the CLIP projection width {self.clip.config.projection_dim}")
        cached = {k: cross_state.pop(k) for k in [k for k in cross_state if k.endswith(".fn.pos_emb")]}
        check_fit(self.cross.state_dict(), cross_state, str(ckpt), key_name=lambda k: "cross_model." + k, what="the MPS cross model")
        self.cross.load_state_dict(cross_state)
        for key, table in cached.items():  # rotary tables the official blocks cached before the model was saved
            self.cross.get_submodule(key[: -len(".pos_emb")]).register_buffer("pos_emb", table, persistent=False)
        self.cross = self.cross.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer, self.processor = load_clip_processor(processor, what="CLIP-H processor")
        self.condition = condition
        self._condition_tokens: torch.Tensor | None = None

    # -- text ----------------------------------------------------------------------------------
    def _tokens(self, texts: list[str]) -> torch.Tensor:
        n = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10_000 else 77
        batch = self.tokenizer(texts, max_length=n, padding="max_length", truncation=True, return_tensors="pt")
        return batch["input_ids"].to(self.device)

    def token_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(projected token features (P, 77, d), projected end-of-text feature (P, d))``, no attention mask."""
        ids = self._tokens(texts)
        hidden = self.clip.text_model(input_ids=ids).last_hidden_state
        eos = hidden[torch.arange(len(ids), device=ids.device), ids.to(torch.int).argmax(dim=-1)]
        return self.clip.text_projection(hidden), self.clip.text_projection(eos)

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens, eos = self.token_features(prompts)
        return torch.cat([eos[:, None], tokens], dim=1)  # row 0: the prompt feature, then the 77 tokens

    def condition_tokens(self) -> torch.Tensor:
        """Projected token features ``(77, d)`` of the condition text, computed once."""
        if self._condition_tokens is None:
            with torch.inference_mode():
                self._condition_tokens = self.token_features([self.condition])[0][0]
        return self._condition_tokens

    # -- images --------------------------------------------------------------------------------
    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Projected encoder tokens (before ``post_layernorm``) ``(B, 1 + patches, d)``."""
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).last_hidden_state)

    # -- score ---------------------------------------------------------------------------------
    def forward(self, pixels, prompts):
        text = self.cached_text_features(prompts, self._encode_text)
        prompt_feature, tokens = text[:, 0], text[:, 1:]
        with torch.no_grad():  # the mask is a constant of the prompt (no gradient flows through it)
            bias = condition_bias(tokens, self.condition_tokens())
        image = self.cross(self.image_tokens(pixels), tokens, bias)[:, 0]
        cos = (l2_normalize(prompt_feature) * l2_normalize(image)).sum(-1)
        return self.clip.logit_scale.float().exp() * cos

    def preference_temperature(self) -> float:
        """The score already carries ``exp(logit_scale)``: softmax(score) is the README's probability."""
        return 1.0


__all__ = ["MPS", "CrossModel", "OVERALL_CONDITION", "condition_bias", "convert_checkpoint", "read_mps_checkpoint", "pickle_globals"]
