"""The two model backends of the ``q-align`` metric.

Both turn a batch of samples (each a list of frames: one for an image, several for a video)
into the logits of the level words at the next-token position after the answer prefix. The
metric then takes the softmax over those logits and the weighted sum.

* :class:`Owl2Backend`: the official checkpoints (``q-future/one-align``, ``q-future/q-align-*``),
  mPLUG-Owl2 on LLaMA-2, run natively (:mod:`prefscore.backbones.mplug_owl2`; no remote code) on any
  transformers, and scored exactly as ``q_align/evaluate/scorer.py``.
* :class:`NativeBackend`: a vision-language model that transformers implements itself
  (LLaVA-style ``llava``; Qwen2-VL-style ``qwen2_vl`` / ``qwen2_5_vl``), loaded with the Auto
  classes. The prompt is rendered with the model's chat template. No checkpoint was trained for
  this recipe: zero-shot scores from such a model are not Q-Align's.

Model weights are loaded on first use (or :meth:`load`); constructing a backend reads only the
small files (config, tokenizer, image-processor settings, chat template).
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .. import hub, preprocess
from ..errors import CheckpointError, ModelSourceError, PrefscoreError
from ..images import to_rgb

IMAGE_TOKEN_INDEX = -200  # mPLUG-Owl2's placeholder id for the image features
OWL2_IMAGE_TOKEN = "<|image|>"
NATIVE_MODEL_TYPES = ("llava", "qwen2_vl", "qwen2_5_vl")

SMALL_FILES = ["*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]
MODEL_FILES = SMALL_FILES + ["*.safetensors", "*.bin"]


class QAlignBackendError(PrefscoreError, RuntimeError):
    """The checkpoint cannot be run in this environment (library versions, unsupported model type)."""


def installed_transformers() -> str:
    import transformers

    return transformers.__version__


def pad_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """The official background: ``tuple(int(m * 255) for m in image_mean)`` ((122, 116, 104) for CLIP)."""
    return tuple(int(m * 255) for m in mean)


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """The official ``expand2square``: pad to a square of side ``max(w, h)`` on a canvas of the
    image's own mode filled with ``background``, the image at offset ``(long - short) // 2``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def expand2square_any_mode(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """:func:`expand2square`, and for the modes whose canvas cannot take a colour triple (L, LA, I,
    I;16, 1, F, PA: the official code raises ``TypeError`` on these when not square) the image
    converted to RGB first, then padded with the same colour."""
    try:
        return expand2square(image, background)
    except TypeError:
        return expand2square(image.convert("RGB"), background)


def load_llama_tokenizer(directory: Path):
    """The LLaMA tokenizer of an mPLUG-Owl2 directory, without remote code.

    transformers 5's ``AutoTokenizer`` asks to run the checkpoint's code (``auto_map`` in
    config.json); ``LlamaTokenizer`` reads ``tokenizer.model`` (SentencePiece) or
    ``tokenizer.json`` directly and gives the ids of the official slow tokenizer.
    """
    from transformers import LlamaTokenizer

    try:
        return LlamaTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, ImportError, TypeError) as exc:
        import importlib.util

        hint = ("; reading tokenizer.model needs sentencepiece (pip install sentencepiece)"
                if importlib.util.find_spec("sentencepiece") is None else "")
        raise ModelSourceError(f"{directory}: cannot load the LLaMA tokenizer: {exc}{hint}") from None


def reference_level_ids(tokenizer, levels: Sequence[str]) -> list[int]:
    """Q-Align's rule: the first token of ``tokenizer(word)`` after BOS (``input_ids[1]`` for LLaMA)."""
    ids = []
    for word in levels:
        pieces = tokenizer(word)["input_ids"]
        if pieces and tokenizer.bos_token_id is not None and pieces[0] == tokenizer.bos_token_id:
            pieces = pieces[1:]
        if not pieces:
            raise ValueError(f"level word {word!r} encodes to no token")
        ids.append(pieces[0])
    return _distinct(tokenizer, levels, ids)


def continuation_level_ids(tokenizer, answer_prefix: str, levels: Sequence[str]) -> list[int]:
    """The first token of each level word as it continues ``answer_prefix`` (after a space).

    For LLaMA's SentencePiece this is the same piece as :func:`reference_level_ids` (``▁word``);
    for byte-level BPE tokenizers (Qwen) it is the ``Ġword`` piece that follows ``is``, which the
    word encoded alone would miss.
    """
    base = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]
    sep = "" if not answer_prefix or answer_prefix[-1].isspace() else " "
    ids = []
    for word in levels:
        full = tokenizer(answer_prefix + sep + word, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"level word {word!r} merges with the end of the answer prefix {answer_prefix!r} "
                             "in this tokenizer; change the prefix or the word")
        ids.append(full[len(base)])
    return _distinct(tokenizer, levels, ids)


def _distinct(tokenizer, levels: Sequence[str], ids: list[int]) -> list[int]:
    seen: dict[int, str] = {}
    for word, i in zip(levels, ids):
        if i in seen:
            piece = tokenizer.convert_ids_to_tokens(i)
            raise ValueError(f"level words {seen[i]!r} and {word!r} start with the same token {piece!r} (id {i}); "
                             "only the first token of each word is scored, so they must differ")
        seen[i] = word
    return ids


def _from_pretrained_dtype(dtype: torch.dtype) -> dict:
    from packaging.version import Version

    key = "dtype" if Version(installed_transformers()) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: cannot read: {exc}") from None


def model_type(directory: Path) -> str:
    """``model_type`` of ``config.json``; ``"mplug_owl2"`` also when only the architecture names it."""
    cfg = directory / "config.json"
    if not cfg.is_file():
        raise ModelSourceError(f"{directory}: no config.json (expected a Hugging Face model directory)")
    config = _read_json(cfg)
    if any("MPLUGOwl2" in str(a) for a in config.get("architectures") or []):
        return "mplug_owl2"
    return str(config.get("model_type", ""))


class _LazyModel(ABC):
    """Loads the weights on first use, so constructing the metric reads only small files."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype, device_map, model_kwargs: dict | None):
        self.source = source
        self.device = device
        self.dtype = dtype
        self.device_map = device_map
        self.model_kwargs = dict(model_kwargs or {})
        self._model = None

    def load(self):
        if self._model is None:
            directory = hub.local_dir(self.source, MODEL_FILES, what="Q-Align model weights")
            kwargs = dict(_from_pretrained_dtype(self.dtype), **self.model_kwargs)
            if self.device_map is not None:
                kwargs["device_map"] = self.device_map
            model = self._from_pretrained(directory, kwargs)
            if self.device_map is None:
                model = model.to(self.device)
            self._model = model.eval()
        return self._model

    @abstractmethod
    def _from_pretrained(self, directory: Path, kwargs: dict):
        """The model class's ``from_pretrained`` with the dtype/device_map ``kwargs``."""

    @property
    def input_device(self) -> torch.device:
        return self.load().get_input_embeddings().weight.device


class Owl2Backend:
    """The official mPLUG-Owl2 checkpoints, run natively and scored exactly as ``scorer.py``.

    Images are padded in their own mode (``expand2square`` with the processor's mean colour), then
    go through transformers 4.x's ``CLIPImageProcessor`` (:func:`preprocess.hf_clip`). The prompt is
    cut at ``<|image|>`` by :func:`owl2_prompt_ids`; the level ids are ``tokenizer(word)[1]``.
    Samples with the same number of frames run in one forward pass (images always do); samples
    of different lengths run separately, so every video scores as it does alone.
    """

    def __init__(self, source: str, directory: Path, question: str, answer_prefix: str, levels: Sequence[str],
                 device: torch.device, dtype: torch.dtype, device_map=None, model_kwargs: dict | None = None):
        if model_kwargs:
            raise ValueError(f"model_kwargs {sorted(model_kwargs)} are passed to transformers' from_pretrained, which "
                             "the native mPLUG-Owl2 does not use; use dtype= and device_map=")
        self.source = source
        self.device = device
        self.dtype = dtype
        self.device_map = device_map
        self._model = None
        self.tokenizer = load_llama_tokenizer(directory)
        path = directory / "preprocessor_config.json"
        if not path.is_file():
            raise ModelSourceError(f"{directory}: no preprocessor_config.json (the CLIP image processor settings)")
        self.processor = preprocess.HFProcessorConfig.from_dict(_read_json(path))
        self.background = pad_colour(self.processor.mean)
        self.prompt = f"USER: {question}\n{OWL2_IMAGE_TOKEN}\nASSISTANT: {answer_prefix}"
        if self.prompt.count(OWL2_IMAGE_TOKEN) != 1:
            raise ValueError(f"the question and answer prefix must not contain {OWL2_IMAGE_TOKEN!r} (the prompt has one "
                             "image slot)")
        self.input_ids = torch.tensor(owl2_prompt_ids(self.prompt, self.tokenizer), dtype=torch.long)
        self.level_ids = reference_level_ids(self.tokenizer, levels)

    def load(self):
        """The :class:`~prefscore.backbones.mplug_owl2.Owl2ForScoring` model (loaded on first use)."""
        if self._model is None:
            from ..backbones.mplug_owl2 import load_owl2

            directory = hub.local_dir(self.source, MODEL_FILES, what="Q-Align model weights")
            self._model = load_owl2(directory, self.dtype, self.device, self.device_map)
        return self._model

    @property
    def input_device(self) -> torch.device:
        return self.load().vision_device

    def pixels(self, frame: Image.Image, name: str = "<image>") -> torch.Tensor:
        """``expand2square`` in the frame's own mode, then CLIPImageProcessor (4.x): ``(3, S, S)`` float32."""
        return preprocess.hf_clip(expand2square_any_mode(frame, self.background), self.processor, name)

    def prepare(self, frames: list[Image.Image], name: str) -> torch.Tensor:
        """The ``(frames, 3, S, S)`` pixels of one sample (raises ImageError naming ``name``)."""
        return torch.stack([self.pixels(f, name) for f in frames])

    def level_logits(self, samples: list, video: bool) -> torch.Tensor:
        """``(B, L)`` float32 logits of the level tokens; ``samples`` are :meth:`prepare` tensors
        (or lists of frames, prepared here)."""
        model = self.load()
        samples = [s if isinstance(s, torch.Tensor) else self.prepare(s, "<image>") for s in samples]
        out = torch.empty(len(samples), len(self.level_ids), dtype=torch.float32)
        groups: dict[int, list[int]] = {}
        for i, pixels in enumerate(samples):
            groups.setdefault(len(pixels), []).append(i)
        for frames, rows in groups.items():
            pixels = torch.cat([samples[i] for i in rows])
            logits = model.next_token_logits(self.input_ids, pixels, frames=frames)
            out[rows] = logits[:, self.level_ids].cpu()
        return out


def owl2_prompt_ids(prompt: str, tokenizer) -> list[int]:
    """mPLUG-Owl2's ``tokenizer_image_token``: each chunk around ``<|image|>`` tokenised on its own,
    the BOS kept only for the first chunk, the image token replaced by ``IMAGE_TOKEN_INDEX``."""
    chunks = [tokenizer(c)["input_ids"] if c else [] for c in prompt.split(OWL2_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    has_bos = bool(chunks and chunks[0] and bos is not None and chunks[0][0] == bos)
    ids = [bos] if has_bos else []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[1:] if has_bos and chunk and chunk[0] == bos else chunk)
    return ids


class NativeBackend(_LazyModel):
    """LLaVA- and Qwen2-VL-style models of transformers, prompted through their chat template.

    Inputs are assembled the way their processors do it (so that no processor class is needed:
    transformers 5 cannot build the Qwen2-VL processor without torchvision): the chat template is
    rendered with ``[question, image x frames]`` as the user turn and the generation prompt, the
    answer prefix is appended, each image token is expanded to the number of visual tokens of its
    image, and the image processor (``AutoImageProcessor``) makes the pixels. Sequences are padded
    on the right and read at their last real token, so padding never moves a score.
    """

    def __init__(self, source: str, directory: Path, question: str, answer_prefix: str, levels: Sequence[str],
                 device: torch.device, dtype: torch.dtype, device_map=None, model_kwargs: dict | None = None,
                 pad_to_square: bool = True):
        super().__init__(source, device, dtype, device_map, model_kwargs)
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        kind = model_type(directory)
        if kind not in NATIVE_MODEL_TYPES:
            raise QAlignBackendError(
                f"{source}: model type {kind!r} is not supported by q-align; supported: mplug_owl2 (official "
                f"checkpoints) and the transformers-native {', '.join(NATIVE_MODEL_TYPES)}")
        try:
            self.config = AutoConfig.from_pretrained(str(directory))
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
            self.image_processor = AutoImageProcessor.from_pretrained(str(directory))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelSourceError(f"{source}: cannot load the config, tokenizer or image processor: {exc}") from None
        self.kind = kind
        self.question = question
        self.answer_prefix = answer_prefix
        self.pad_to_square = pad_to_square
        self.background = pad_colour(getattr(self.image_processor, "image_mean", preprocess.OPENAI_MEAN))
        token_id = getattr(self.config, "image_token_id", None)
        if token_id is None:
            token_id = getattr(self.config, "image_token_index", None)
        if token_id is None:
            raise CheckpointError(f"{source}: the model config names no image token (image_token_id)")
        self.image_token_id = int(token_id)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if self.pad_id is None:
            self.pad_id = 0  # padded positions are masked and never read
        self.chat_template = _chat_template(directory, self.tokenizer)
        processor_json = directory / "processor_config.json"
        self.processor_config = _read_json(processor_json) if processor_json.is_file() else {}
        self.level_ids = continuation_level_ids(self.tokenizer, answer_prefix, levels)
        self._prompts: dict[int, list[int]] = {}

    def _from_pretrained(self, directory, kwargs):
        from transformers import AutoModelForImageTextToText

        try:
            return AutoModelForImageTextToText.from_pretrained(str(directory), **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{self.source}: cannot load the model: {exc}") from None

    def prepare(self, frames: list[Image.Image], name: str) -> list[Image.Image]:
        """The frames of one sample in RGB (Pillow's ``convert``; raises ImageError naming ``name``)."""
        return [to_rgb(f, name) for f in frames]

    def prompt_text(self, n_images: int) -> str:
        """The full prompt for a sample of ``n_images`` frames, before image-token expansion."""
        if self.chat_template is not None:
            content = [{"type": "text", "text": self.question}] + [{"type": "image"} for _ in range(n_images)]
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                          chat_template=self.chat_template,
                                                          add_generation_prompt=True, tokenize=False)
        else:  # Q-Align's own conversation format
            rendered = f"USER: {self.question}\n" + self.image_token * n_images + "\nASSISTANT:"
        found = rendered.count(self.image_token)
        if found != n_images:
            raise QAlignBackendError(f"{self.source}: the chat template rendered {found} image tokens for {n_images} "
                                     f"image(s); it must place one {self.image_token!r} per {{'type': 'image'}} item")
        if self.answer_prefix and not rendered[-1:].isspace():
            rendered += " "
        return rendered + self.answer_prefix

    def prompt_ids(self, n_images: int) -> list[int]:
        if n_images not in self._prompts:
            text = self.prompt_text(n_images)
            bos = self.tokenizer.bos_token
            self._prompts[n_images] = self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        return self._prompts[n_images]

    def image_token_counts(self, vision: dict) -> list[int]:
        """Visual tokens per image, as the processors count them."""
        if "image_grid_thw" in vision:  # Qwen2-VL: patches merged merge_size x merge_size
            merge = getattr(self.image_processor, "merge_size", None) or self.config.vision_config.spatial_merge_size
            return (vision["image_grid_thw"].prod(-1) // merge**2).tolist()
        # LLaVA: (H/p)(W/p) patches, + the CLS token, - 1 with the "default" feature strategy
        pc, vc = self.processor_config, self.config.vision_config
        patch = int(pc.get("patch_size") or vc.patch_size)
        extra = pc.get("num_additional_image_tokens")
        if extra is None:
            extra = 1 if "clip" in str(getattr(vc, "model_type", "")) else 0
        strategy = pc.get("vision_feature_select_strategy") or getattr(self.config, "vision_feature_select_strategy", "default")
        h, w = vision["pixel_values"].shape[-2:]
        return [(h // patch) * (w // patch) + int(extra) - (1 if strategy == "default" else 0)] * len(vision["pixel_values"])

    def inputs(self, samples: list[list[Image.Image]]) -> tuple[dict, torch.Tensor]:
        """Model inputs for a batch (right-padded) and the index of each row's last real token."""
        frames = [expand2square(f, self.background) if self.pad_to_square else f for s in samples for f in s]
        vision = dict(self.image_processor(images=frames, return_tensors="pt"))
        counts = iter(self.image_token_counts(vision))
        rows = []
        for sample in samples:
            ids = []
            for t in self.prompt_ids(len(sample)):
                ids.extend([t] * next(counts) if t == self.image_token_id else [t])
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, **vision}
        return batch, mask.sum(1) - 1

    def level_logits(self, samples: list[list[Image.Image]], video: bool) -> torch.Tensor:
        """``(B, L)`` logits of the level tokens at each row's last prompt token."""
        model = self.load()
        batch, last = self.inputs(samples)
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()
        device = self.input_device
        batch = {k: (v.to(device, self.dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}
        keep = torch.unique(last)  # sorted; logits only at the positions read
        logits = model(**batch, logits_to_keep=keep.to(device)).logits
        column = torch.searchsorted(keep, last)
        rows = logits[torch.arange(len(samples), device=logits.device), column.to(logits.device)]
        return rows[:, self.level_ids].float().cpu()


def _chat_template(directory: Path, tokenizer) -> str | None:
    """The processor's chat template (``chat_template.jinja`` / ``chat_template.json``), else the tokenizer's."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = directory / "chat_template.json"
    if js.is_file():
        template = _read_json(js).get("chat_template")
        if isinstance(template, str):
            return template
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else None


def make_backend(source: str, question: str, answer_prefix: str, levels: Sequence[str], device: torch.device,
                 dtype: torch.dtype, device_map=None, model_kwargs: dict | None = None, pad_to_square: bool = True):
    """The backend for ``source`` (a directory or hub id), chosen by ``model_type`` in its config."""
    directory = hub.local_dir(source, SMALL_FILES, what="Q-Align model config and tokenizer")
    if model_type(directory) == "mplug_owl2":
        if not pad_to_square:
            raise ValueError("pad_to_square=False is only for transformers-native models; the official "
                             "mPLUG-Owl2 checkpoints were trained on images padded to a square")
        return Owl2Backend(source, directory, question, answer_prefix, levels, device, dtype, device_map, model_kwargs)
    return NativeBackend(source, directory, question, answer_prefix, levels, device, dtype, device_map, model_kwargs,
                         pad_to_square=pad_to_square)
