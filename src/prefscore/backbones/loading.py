"""Turning a model *source* (local directory or hub id) into a :class:`ClipTower`."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import torch

from .. import hub
from ..errors import ModelSourceError
from .clip import ClipArch, ClipTower, clip_from_pretrained, clip_from_state_dict, read_state_dict

HF_CLIP_FILES = ["config.json", "*.safetensors", "pytorch_model.bin", "*.txt", "tokenizer*", "vocab.json",
                 "merges.txt", "special_tokens_map.json", "preprocessor_config.json"]


def has_hf_clip(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any(
        (directory / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")
    )


def load_clip_tower(source: str | os.PathLike, arch: ClipArch, dtype: torch.dtype, openai_names=(), what="CLIP model") -> ClipTower:
    """A CLIP from an HF-format directory/repo, or from an OpenAI/open_clip checkpoint file in a directory.

    ``openai_names`` are the checkpoint file names to look for (e.g. ``ViT-L-14.pt``) when the
    source is a directory without HF files.
    """
    if hub.is_local(source):
        root = Path(source).expanduser()
        if has_hf_clip(root):
            return ClipTower(clip_from_pretrained(root, dtype))
        for name in openai_names:
            if (root / name).is_file():
                return ClipTower(clip_from_state_dict(read_state_dict(root / name), arch, str(root / name), dtype))
        raise ModelSourceError(
            f"{root}: no {what} found: expected HF files (config.json + model.safetensors) or one of {', '.join(openai_names)}"
        )
    directory = hub.local_dir(source, HF_CLIP_FILES, what=what)
    return ClipTower(clip_from_pretrained(directory, dtype))


def cache_dir() -> Path:
    root = Path(os.environ.get("PREFSCORE_CACHE", Path.home() / ".cache" / "prefscore"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def fetch_url(url: str, what: str) -> Path:
    """A file published at a plain URL (e.g. on GitHub), cached under ``$PREFSCORE_CACHE``."""
    target = cache_dir() / url.rsplit("/", 1)[-1].split("?")[0]
    if target.is_file():
        return target
    if not hub.hub_reachable() and os.environ.get("HF_HUB_OFFLINE"):
        raise ModelSourceError(f"{what} ({url}) is not cached at {target} and we are offline; download it and pass its directory as the model")
    try:
        tmp = target.with_suffix(target.suffix + ".part")
        with urllib.request.urlopen(url, timeout=10) as response, open(tmp, "wb") as fh:
            fh.write(response.read())
        tmp.replace(target)
    except OSError as exc:
        raise ModelSourceError(
            f"{what} could not be downloaded from {url} ({exc}); download it where you have network access "
            f"and put it at {target}, or in a directory passed as the model"
        ) from None
    return target


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]


def processor_dir(source: str | os.PathLike, what: str) -> Path:
    """Directory with a CLIP tokenizer and ``preprocessor_config.json`` (local, or from the hub)."""
    return hub.local_dir(source, TOKENIZER_FILES + ["preprocessor_config.json"], what=what)


def load_hf_tokenizer(directory: Path):
    """The HF (fast) CLIP tokenizer saved in ``directory``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{directory}: cannot load the CLIP tokenizer: {exc}") from None


def load_processor_config(directory: Path):
    """The image settings of ``preprocessor_config.json`` in ``directory``."""
    from ..preprocess import HFProcessorConfig

    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        raise ModelSourceError(f"{directory}: no preprocessor_config.json (the image processor settings)")
    return HFProcessorConfig.from_dict(hub.read_json(path, "image processor settings"))


def load_clip_processor(source: str | os.PathLike, what: str):
    """``(tokenizer, HFProcessorConfig)`` of a CLIP processor (local directory or hub repo)."""
    directory = processor_dir(source, what=what)
    return load_hf_tokenizer(directory), load_processor_config(directory)


def has_processor(directory: Path) -> bool:
    return (directory / "preprocessor_config.json").is_file() and any(
        (directory / f).is_file() for f in ("tokenizer.json", "vocab.json")
    )


def hf_max_length(tokenizer) -> int:
    """Tokens a CLIP text tower takes (the tokenizer's ``model_max_length``, else CLIP's 77)."""
    return tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else 77


def hf_token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Untruncated token counts (special tokens included), to tell which texts a tokenizer cuts."""
    return [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]


def hf_text_features(tower: ClipTower, tokenizer, prompts: list[str], device, truncate: bool = True) -> torch.Tensor:
    """Projected text features for ``prompts`` with the HF tokenizer (padded batch, 77 tokens max)."""
    kwargs = dict(truncation=True, max_length=hf_max_length(tokenizer)) if truncate else {}
    batch = tokenizer(prompts, padding=True, return_tensors="pt", **kwargs)
    return tower.text_features(batch["input_ids"].to(device), batch["attention_mask"].to(device))
