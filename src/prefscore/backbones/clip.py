"""CLIP towers on transformers' ``CLIPModel``, loaded from any of the published checkpoint formats.

* HF format (``config.json`` + ``model.safetensors``/``pytorch_model.bin``): ``from_pretrained``.
* OpenAI format (``ViT-L-14.pt``: a TorchScript archive or a plain state dict, usually float16) and
  open_clip format (``open_clip_model.safetensors``, ``*.pt`` with ``{"state_dict": ...}``, e.g.
  HPSv2): converted to ``CLIPModel`` keys in memory (q/k/v split out of ``in_proj``, projections
  transposed). Every size the tensors determine is read off them, so tiny test checkpoints and the
  real ViT-L/14 / ViT-H-14 share one code path; head counts and the activation come from
  :class:`ClipArch` (an open_clip config in the model directory, or the known architecture).

Features are always computed in float32 unless the caller asks for another dtype.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError


@dataclass(frozen=True)
class ClipArch:
    """What a CLIP state dict does not say about itself.

    ``vision_head_width``/``text_head_width`` give heads = width // head_width; explicit
    ``*_heads`` override them. ``act`` is ``"quick_gelu"`` (OpenAI weights) or ``"gelu"``
    (open_clip's LAION models).
    """

    vision_head_width: int = 64
    text_head_width: int = 64
    vision_heads: int | None = None
    text_heads: int | None = None
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_open_clip_config(cls, path: str | Path, act: str) -> "ClipArch":
        """Read an open_clip model config (``open_clip_config.json`` or a ``model_configs/*.json``)."""
        from ..hub import read_json

        cfg = read_json(path, "open_clip model config")
        cfg = cfg.get("model_cfg", cfg)
        vis, txt = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if cfg.get("quick_gelu"):
            act = "quick_gelu"
        return cls(
            vision_head_width=int(vis.get("head_width", 64)),
            text_head_width=int(txt.get("head_width", 64)),
            text_heads=int(txt["heads"]) if "heads" in txt else None,
            act=act,
        )


OPENAI_ARCH = ClipArch(act="quick_gelu")
# open_clip ViT-H-14 (laion2B-s32B-b79K; the HPSv2 base): vision head width 80, text 16 heads of 64, GELU.
OPEN_CLIP_VIT_H_14 = ClipArch(vision_head_width=80, text_head_width=64, act="gelu")


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl`` and TorchScript ``code/``)."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_weights(path: str | Path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary Python
    objects (a pickle that would run code when loaded is refused with a :class:`CheckpointError`)."""
    import pickle

    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain containers, "
            f"and unpickling them could run arbitrary code. prefscore reads only plain weight files "
            f"(torch.load weights_only=True); re-save the state dict alone, or use safetensors"
            f" ({first[0] if first else 'UnpicklingError'})") from None
    except Exception as exc:  # truncated zip, not a checkpoint at all, ...
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc}") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file into a flat ``{name: tensor}`` dict.

    Handles safetensors, plain ``torch.save`` dicts (optionally under ``state_dict``/``model``
    with ``module.`` prefixes) and TorchScript archives (OpenAI's released ``.pt`` files).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_torchscript(path):
        # OpenAI's released .pt files: TorchScript code and data read by torch's own unpickler (no Python objects
        # are created from the file, so nothing in it runs as Python); read directly, without torch.load's warning
        try:
            with warnings.catch_warnings():  # the published files are TorchScript: nothing for a user to act on
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read TorchScript checkpoint: {exc}") from None
    else:
        obj = load_weights(path)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "params"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def count_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in sd for m in [pat.match(k)] if m}
    return max(ids) + 1 if ids else 0


def _need(sd: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{source}: tensor '{key}' is missing; this is not an OpenAI/open_clip CLIP checkpoint")
    return sd[key]


def _heads(width: int, head_width: int, explicit: int | None, tower: str, source: str) -> int:
    heads = explicit if explicit is not None else width // head_width
    if heads < 1 or width % heads:
        raise CheckpointError(f"{source}: {tower} width {width} is not divisible into {heads} attention heads")
    return heads


def is_vit(sd: Mapping[str, torch.Tensor]) -> bool:
    return "visual.conv1.weight" in sd and "visual.transformer.resblocks.0.attn.in_proj_weight" in sd


def text_config_from_state_dict(sd, arch: ClipArch, source: str) -> dict:
    width = _need(sd, "ln_final.weight", source).shape[0]
    token = _need(sd, "token_embedding.weight", source)
    return dict(
        hidden_size=width,
        intermediate_size=_need(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
        num_hidden_layers=count_layers(sd, "transformer.resblocks."),
        num_attention_heads=_heads(width, arch.text_head_width, arch.text_heads, "text", source),
        vocab_size=token.shape[0],
        max_position_embeddings=_need(sd, "positional_embedding", source).shape[0],
        hidden_act=arch.act,
        layer_norm_eps=arch.layer_norm_eps,
        bos_token_id=token.shape[0] - 2,
        eos_token_id=token.shape[0] - 1,  # pooled at the first end-of-text id
        pad_token_id=0,
        projection_dim=_need(sd, "text_projection", source).shape[1],
    )


def vision_config_from_state_dict(sd, arch: ClipArch, source: str) -> dict:
    conv = _need(sd, "visual.conv1.weight", source)
    width, patch = conv.shape[0], conv.shape[-1]
    n_pos = _need(sd, "visual.positional_embedding", source).shape[0]
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise CheckpointError(f"{source}: 'visual.positional_embedding' has {n_pos} rows, not a square grid + 1")
    return dict(
        hidden_size=width,
        intermediate_size=_need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
        num_hidden_layers=count_layers(sd, "visual.transformer.resblocks."),
        num_attention_heads=_heads(width, arch.vision_head_width, arch.vision_heads, "vision", source),
        patch_size=patch,
        image_size=patch * grid,
        num_channels=conv.shape[1],
        hidden_act=arch.act,
        layer_norm_eps=arch.layer_norm_eps,
        projection_dim=_need(sd, "visual.proj", source).shape[1],
    )


def _convert_blocks(sd, src_prefix: str, dst_prefix: str, n: int, out: dict) -> None:
    for i in range(n):
        s, d = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
        w = sd[s + "attn.in_proj_weight"]
        b = sd[s + "attn.in_proj_bias"]
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[d + f"self_attn.{name}.weight"] = w.chunk(3, dim=0)[j]
            out[d + f"self_attn.{name}.bias"] = b.chunk(3, dim=0)[j]
        pairs = {
            "attn.out_proj": "self_attn.out_proj",
            "ln_1": "layer_norm1",
            "ln_2": "layer_norm2",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for a, c in pairs.items():
            out[d + c + ".weight"] = sd[s + a + ".weight"]
            out[d + c + ".bias"] = sd[s + a + ".bias"]


def convert_text(sd, n_layers: int) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip text-tower keys -> ``CLIPTextModelWithProjection``/``CLIPModel`` keys."""
    out = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t(),
    }
    _convert_blocks(sd, "transformer.resblocks.", "text_model.encoder.layers.", n_layers, out)
    return out


def convert_vision(sd, n_layers: int) -> dict[str, torch.Tensor]:
    """OpenAI/open_clip ViT image-tower keys -> ``CLIPModel`` keys."""
    out = {
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].t(),
    }
    _convert_blocks(sd, "visual.transformer.resblocks.", "vision_model.encoder.layers.", n_layers, out)
    return out


def check_fit(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str, *,
              optional: frozenset[str] | set[str] = frozenset(), key_name=lambda k: k, what: str = "the model") -> None:
    """Raise :class:`CheckpointError` naming the first missing, unexpected or wrongly shaped tensor.

    ``expected``: the model's state dict; ``optional``: keys that may be absent; ``key_name`` maps a
    model key to the name the user knows (the checkpoint's own key) for the message.
    """
    missing = [key_name(k) for k in expected if k not in state and k not in optional]
    unexpected = [key_name(k) for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source}: checkpoint does not fit {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{source}: tensor '{key_name(k)}' has shape {tuple(v.shape)}, {what} expects {tuple(expected[k].shape)}"
            )


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> nn.Module:
    """Strictly load ``state`` into ``model`` (built on the meta device), naming any misfit tensor."""
    check_fit(model.state_dict(), state, source, optional={k for k, _ in model.named_buffers()})
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    _materialise_buffers(model)
    return model.eval().requires_grad_(False)


def _materialise_buffers(model: nn.Module) -> None:
    """Re-create non-persistent buffers left on the meta device (position ids)."""
    for module in model.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if "position_ids" not in name:
                    raise RuntimeError(f"unexpected meta buffer {name} in {type(module).__name__}")
                module.register_buffer(name, torch.arange(buf.shape[-1]).expand(buf.shape).clone(), persistent=False)


def clip_from_state_dict(sd: Mapping[str, torch.Tensor], arch: ClipArch, source: str, dtype=torch.float32):
    """Build a ``CLIPModel`` from an OpenAI/open_clip ViT state dict (sizes read off the tensors)."""
    from transformers import CLIPConfig, CLIPModel

    if not is_vit(sd):
        raise CheckpointError(f"{source}: not a ViT CLIP checkpoint (no 'visual.conv1.weight'/'visual.transformer')")
    text_cfg = text_config_from_state_dict(sd, arch, source)
    vision_cfg = vision_config_from_state_dict(sd, arch, source)
    if text_cfg["projection_dim"] != vision_cfg["projection_dim"]:
        raise CheckpointError(
            f"{source}: 'text_projection' projects to {text_cfg['projection_dim']} but 'visual.proj' to "
            f"{vision_cfg['projection_dim']}"
        )
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=text_cfg["projection_dim"])
    config._attn_implementation = "sdpa"
    state = convert_text(sd, text_cfg["num_hidden_layers"])
    state.update(convert_vision(sd, vision_cfg["num_hidden_layers"]))
    state["logit_scale"] = sd.get("logit_scale", torch.tensor(4.6052)).reshape(())
    with torch.device("meta"):
        model = CLIPModel(config)
    return load_into(model, state, source, dtype)


def clip_from_pretrained(directory: str | Path, dtype=torch.float32):
    """``CLIPModel.from_pretrained`` on a local directory in HF format, in ``dtype``."""
    from transformers import CLIPModel

    from ..hub import check_model_dir

    check_model_dir(directory)
    try:
        try:
            model = CLIPModel.from_pretrained(str(directory), dtype=dtype)
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = CLIPModel.from_pretrained(str(directory), torch_dtype=dtype)
    except (ValueError, RuntimeError, OSError) as exc:
        if "mismatched_sizes" in str(exc):
            raise CheckpointError(f"{directory}: config.json does not describe the tensors of the weight file (sizes "
                                  f"differ); the config or the weights are corrupt or from another model") from None
        raise CheckpointError(f"{directory}: cannot load CLIPModel: {exc}") from None
    return model.eval().requires_grad_(False)


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipTower(nn.Module):
    """Projected (un-normalised) image and text features of a HF ``CLIPModel``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
