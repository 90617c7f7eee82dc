"""VQAScore (Lin et al., ECCV 2024, GenAI-Bench): how likely a VLM answers "Yes" to a question about the
prompt, as t2v-metrics 3.0 computes it. The model family follows ``model_type`` in the checkpoint's
``config.json``; ``model=`` also takes t2v-metrics' names (:data:`MODEL_ALIASES`):

* ``clip_t5`` (this module, :class:`ClipT5`): ``Does this figure show "{prompt}"? Please answer yes or no.``,
  described below;
* ``qwen2_vl`` / ``qwen2_5_vl`` (:mod:`prefscore.metrics.vqascore_qwen`, ``qwen2-vl-2b/7b/72b``,
  ``qwen2.5-vl-3b/7b/32b/72b``): ``Does this image show "{prompt}"?`` in the model's chat template; the score
  is the probability of the first token of ``Yes`` after the generation config's repetition penalty;
* ``llava`` (``LlavaQwenForCausalLM``) / ``llava_onevision`` (:mod:`prefscore.metrics.vqascore_llava_ov`,
  ``llava-onevision-qwen2-7b-ov/-si``): ``Does this image show "{prompt}"? Answer the question with Yes or No`` in
  the ``qwen_1_5`` chat template, each anyres tile encoded as a video frame as t2v-metrics does.

``question`` / ``answer`` default to the family's t2v-metrics templates.

Default model ``clip-flant5-xxl`` (``zhiqiulin/clip-flant5-xxl``): CLIP ViT-L/14-336 (hidden states
of the penultimate layer, CLS dropped) -> ``mlp2x_gelu`` projector -> FlanT5-XXL encoder-decoder.
t2v-metrics' ``CLIPT5Model.forward``:

* image: ``Image.open(path).convert("RGB")``, padded to a square with the processor's mean colour
  (``expand2square``), then ``CLIPImageProcessor`` (4.x) at 336 px;
* encoder input: ``SYSTEM + " USER: " + <image> + "\\n" + question + " ASSISTANT: "`` with each chunk
  around ``<image>`` tokenised on its own by the FlanT5 SentencePiece tokenizer (each chunk ends in
  ``</s>``), the image token replaced by the projected image features, ids cut at 2048;
* decoder labels: ``tokenizer("Yes")`` = ``[▁Yes, </s>]``; the score is
  ``exp(-CrossEntropy(mean over the label tokens))``, i.e. the geometric mean of
  ``P(▁Yes | start)`` and ``P(</s> | ▁Yes)``; the softmax runs over ``len(tokenizer)`` logits (the
  official loader resizes the 32128-row embedding to the tokenizer's 32100 ids).

The published checkpoint holds the T5 weights, the projector and (as LLaVA-style checkpoints do)
the CLIP tower under ``vision_tower.vision_tower.*``; the tower's config and image processor come
from ``mm_vision_tower`` of its config (``openai/clip-vit-large-patch14-336``) and the tokenizer from
``google/flan-t5-xxl``, as in t2v-metrics. The official loader casts the model to bfloat16 and needs
CUDA autocast (on a CPU it fails); ``dtype="float32"`` (default) is that computation in float32.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import hub, preprocess
from ..backbones.clip import read_state_dict
from ..base import Metric, check_options
from ..errors import CheckpointError, ModelSourceError, PromptError
from .qalign_backends import expand2square, pad_colour

QUESTION = 'Does this figure show "{}"? Please answer yes or no.'
ANSWER = "Yes"
SYSTEM_MSG = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")
IMAGE_TOKEN = "<image>"
CONTEXT_LEN = 2048
DEFAULT_MODEL = "zhiqiulin/clip-flant5-xxl"
DEFAULT_TOKENIZER = "google/flan-t5-xxl"
#: t2v-metrics' conversation styles of CLIP-FlanT5 (``clip_t5_model.format_question``)
CONVERSATIONS = {
    "t5_chat": SYSTEM_MSG + " USER: " + IMAGE_TOKEN + "\n{} ASSISTANT: ",
    "t5_chat_no_system": "USER: " + IMAGE_TOKEN + "\n{} ASSISTANT: ",
    "t5_chat_no_system_no_user": IMAGE_TOKEN + "\n{} : ",
    "t5_plain": IMAGE_TOKEN + "{}",
}
MODEL_FILES = ["config.json", "*.safetensors", "*.bin", "*.json", "merges.txt", "vocab.json"]
#: t2v-metrics 3.0's ``QWEN2_VL_MODELS`` names -> hub repositories
QWEN_MODELS = {
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2-vl-72b": "Qwen/Qwen2-VL-72B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-32b": "Qwen/Qwen2.5-VL-32B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
}
#: t2v-metrics' LLaVA-OneVision names -> hub repositories (lmms-lab layout)
LLAVA_OV_MODELS = {"llava-onevision-qwen2-7b-ov": "lmms-lab/llava-onevision-qwen2-7b-ov",
                   "llava-onevision-qwen2-7b-si": "lmms-lab/llava-onevision-qwen2-7b-si"}
MODEL_ALIASES = {"clip-flant5-xxl": "zhiqiulin/clip-flant5-xxl", "clip-flant5-xl": "zhiqiulin/clip-flant5-xl",
                 **QWEN_MODELS, **LLAVA_OV_MODELS}  # every t2v-metrics name ``model=`` accepts
QWEN_CLASSES = ("qwen2_vl", "qwen2_5_vl")
TOKENIZER_FILES = ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json"]
TOWER_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "pytorch_model.bin"]
TOWER_PREFIX = "vision_tower.vision_tower."
PROJECTOR_PREFIX = "mm_projector."


@dataclass(frozen=True)
class VQAScoreOptions:
    """Keyword options of ``vqascore`` (``prefscore.load("vqascore", **options)``).

    ``question`` / ``answer``: t2v-metrics' ``question_template`` (``{}`` is the prompt) and
    ``answer_template``; None (default) is the model family's t2v-metrics default (CLIP-FlanT5:
    :data:`QUESTION` / ``Yes``; Qwen2-VL and Qwen2.5-VL: ``Does this image show "{}"?`` / ``Yes``; LLaVA-OneVision:
    ``Does this image show "{}"? Answer the question with Yes or No`` / ``Yes``).
    CLIP-FlanT5 only: ``conversation``: the prompt style (None = ``t5_chat``, the published models;
    ``t5_chat_no_system`` and ``t5_chat_no_system_no_user`` are t2v-metrics' ablations).
    ``tokenizer``: source of the FlanT5 tokenizer (default: the model directory when it holds one,
    else ``google/flan-t5-xxl``). ``vision_tower``: source of the CLIP tower's config, image
    processor (and weights when the checkpoint has none); default ``mm_vision_tower`` of the config.
    """

    question: str | None = None
    answer: str | None = None
    conversation: str | None = None
    tokenizer: str | None = None
    vision_tower: str | None = None

    @classmethod
    def from_kwargs(cls, **options) -> "VQAScoreOptions":
        check_options("vqascore", options, (f.name for f in dataclasses.fields(cls)))
        opts = cls(**options)
        for name in ("question", "answer"):
            if getattr(opts, name) is not None and not isinstance(getattr(opts, name), str):
                raise ValueError(f"{name} must be a string template")
        if opts.conversation is not None and opts.conversation not in CONVERSATIONS:
            raise ValueError(f"unknown conversation {opts.conversation!r}; use one of {', '.join(CONVERSATIONS)}")
        return opts

    def clip_t5_only(self) -> list[str]:
        """The options given that only CLIP-FlanT5 reads."""
        return [n for n in ("conversation", "tokenizer", "vision_tower") if getattr(self, n) is not None]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: cannot read: {exc}") from None


def read_sharded(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers checkpoint folder: an index (``*.index.json``) with its shards,
    or a single ``model.safetensors`` / ``pytorch_model.bin``."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise ModelSourceError(f"{directory}: shard(s) {', '.join(missing)} named by {index_name} are missing")
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(directory / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict(directory / name)
    raise ModelSourceError(f"{directory}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")


def build_projector(config: dict, in_dim: int, out_dim: int) -> torch.nn.Module:
    """LLaVA's ``build_vision_projector``: ``linear``, ``mlp{N}x_gelu`` or ``identity``."""
    kind = config.get("mm_projector_type", "linear")
    if kind == "linear":
        return torch.nn.Linear(in_dim, out_dim)
    if kind == "identity":
        return torch.nn.Identity()
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if not match:
        raise CheckpointError(f"unknown mm_projector_type {kind!r} (expected linear, mlpNx_gelu or identity)")
    layers: list[torch.nn.Module] = [torch.nn.Linear(in_dim, out_dim)]
    for _ in range(1, int(match.group(1))):
        layers += [torch.nn.GELU(), torch.nn.Linear(out_dim, out_dim)]
    return torch.nn.Sequential(*layers)


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: str,
               optional: Sequence[str] = ()) -> None:
    """``load_state_dict`` with messages naming the tensor and both shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not any(k.endswith(o) for o in optional)]
    if missing:
        raise CheckpointError(f"{source}: the {what} weights lack {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)")
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: tensor {k} of the {what} has shape {tuple(v.shape)}, "
                                  f"the architecture expects {tuple(own[k].shape)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


class ClipT5:
    """CLIP-FlanT5 on transformers 5 primitives: ``CLIPVisionModel`` + projector + ``T5ForConditionalGeneration``."""

    def __init__(self, source: str, options: VQAScoreOptions, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, CLIPVisionConfig, CLIPVisionModel, T5Config, T5ForConditionalGeneration

        directory = hub.local_dir(source, MODEL_FILES, what="CLIP-FlanT5 config and weights")
        config = _read_json(directory / "config.json") if (directory / "config.json").is_file() else None
        if config is None:
            raise ModelSourceError(f"{source}: no config.json (expected the zhiqiulin/clip-flant5-xxl layout)")
        if config.get("model_type") != "clip_t5" or "mm_vision_tower" not in config:
            raise CheckpointError(f"{source}: model_type {config.get('model_type')!r} is not a CLIP-FlanT5 checkpoint "
                                  "(config.json with model_type 'clip_t5' and mm_vision_tower); vqascore runs "
                                  "t2v-metrics' clip-flant5-xxl / clip-flant5-xl models")
        self.source = source
        self.device, self.dtype = device, dtype
        self.template = CONVERSATIONS[options.conversation or "t5_chat"]

        tok_source = options.tokenizer
        if tok_source is None:
            has_tok = any((directory / f).is_file() for f in ("spiece.model", "tokenizer.json"))
            tok_source = str(directory) if has_tok else DEFAULT_TOKENIZER
        tok_dir = hub.local_dir(tok_source, TOKENIZER_FILES, what="FlanT5 tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), model_max_length=CONTEXT_LEN)  # as t2v-metrics
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{tok_source}: cannot load the FlanT5 tokenizer: {exc}") from None
        self.n_tokens = len(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        tower_source = options.vision_tower or str(config["mm_vision_tower"])
        tower_dir = hub.local_dir(tower_source, TOWER_FILES, what="CLIP vision tower config and image processor")
        if not (tower_dir / "preprocessor_config.json").is_file():
            raise ModelSourceError(f"{tower_source}: no preprocessor_config.json (the CLIP image processor settings)")
        self.processor = preprocess.HFProcessorConfig.from_dict(_read_json(tower_dir / "preprocessor_config.json"))
        self.background = pad_colour(self.processor.mean)
        self.select_layer = int(config.get("mm_vision_select_layer", -2))
        self.select_feature = config.get("mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise CheckpointError(f"{source}: unknown mm_vision_select_feature {self.select_feature!r}")

        state = read_sharded(directory)
        vision_config = CLIPVisionConfig.from_pretrained(str(tower_dir))
        self.vision = CLIPVisionModel(vision_config)
        tower_state = {k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
        if not tower_state:  # checkpoint without the frozen tower: take it from the tower repository
            tower_state = {k: v for k, v in read_sharded(tower_dir).items() if k.startswith("vision_model.")}
            if not tower_state:
                raise ModelSourceError(f"{tower_source}: no CLIP vision weights (vision_model.*)")
        if not any(k.startswith("vision_model.") for k in self.vision.state_dict()):  # transformers 5 layout
            tower_state = {k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in tower_state.items()}
        _load_into(self.vision, tower_state, "CLIP vision tower", source, optional=("position_ids",))

        t5_fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in (
            "model_type", "architectures", "transformers_version", "torch_dtype", "dtype")}
        t5_config = T5Config(**t5_fields)
        # transformers 5 always ties lm_head to the embeddings and reads the saved flag as
        # scale_decoder_outputs; FlanT5 (T5 v1.1) has its own lm_head and no scaling
        untied = config.get("tie_word_embeddings", True) is False
        t5_config.tie_word_embeddings = not untied
        vocab = int(t5_config.vocab_size)
        if self.n_tokens > vocab:
            raise CheckpointError(f"{source}: the tokenizer has {self.n_tokens} ids but the checkpoint only {vocab} "
                                  "embeddings (the official loader would add randomly initialised rows)")
        # the official loader calls resize_token_embeddings(len(tokenizer)): the first n rows are kept
        t5_config.vocab_size = self.n_tokens
        self.t5 = T5ForConditionalGeneration(t5_config)
        if untied and self.t5.lm_head.weight is self.t5.shared.weight:
            self.t5.lm_head.weight = torch.nn.Parameter(self.t5.shared.weight.detach().clone())
        t5_state = {k: v for k, v in state.items() if not k.startswith((TOWER_PREFIX, PROJECTOR_PREFIX, "embed_tokens."))}
        for key in ("shared.weight", "lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            if key in t5_state:
                t5_state[key] = t5_state[key][: self.n_tokens]
        if "shared.weight" not in t5_state:
            raise CheckpointError(f"{source}: no T5 weights (shared.weight) in the checkpoint")
        t5_state.setdefault("encoder.embed_tokens.weight", t5_state["shared.weight"])
        t5_state.setdefault("decoder.embed_tokens.weight", t5_state["shared.weight"])
        if "lm_head.weight" not in t5_state:
            if not untied:
                t5_state["lm_head.weight"] = t5_state["shared.weight"]
            else:
                raise CheckpointError(f"{source}: no lm_head.weight (FlanT5 does not tie it to the embeddings)")
        _load_into(self.t5, t5_state, "FlanT5", source)

        self.projector = build_projector(config, int(config.get("mm_hidden_size", vision_config.hidden_size)),
                                         int(t5_config.d_model))
        projector_state = {k[len(PROJECTOR_PREFIX):]: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
        _load_into(self.projector, projector_state, "projector", source)
        for module in (self.vision, self.projector, self.t5):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.embed = self.t5.get_input_embeddings()
        self.answer_template = ANSWER if options.answer is None else options.answer
        self.question_template = QUESTION if options.question is None else options.question
        self._ids: dict[str, tuple[list[int], list[int]]] = {}

    # -- inputs ------------------------------------------------------------------------------------
    def preprocess(self, image, name: str) -> torch.Tensor:
        """``convert("RGB")`` -> pad to a square with the mean colour -> CLIPImageProcessor (4.x)."""
        from ..images import to_rgb

        return preprocess.hf_clip(expand2square(to_rgb(image, name), self.background), self.processor, name=name)

    def preprocess_key(self) -> tuple:
        return ("vqascore-pad-square", self.background, self.processor)

    def preprocess_tensor(self, pixels: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Differentiable twin of :meth:`preprocess`: RGB ``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, 336, 336)``.

        ``expand2square`` in torch (the mean colour, as 8-bit levels / 255, around the image at offset
        ``(long - short) // 2``), then :func:`prefscore.differentiable.hf_clip_tensor`; with ``quantize``
        the padding holds exactly the colour Pillow pastes, so the values equal :meth:`preprocess`'s.
        """
        from ..differentiable import check_pixels, hf_clip_tensor

        x = check_pixels(pixels)
        b, _, h, w = x.shape
        if h != w:
            fill = torch.tensor(self.background, dtype=x.dtype, device=x.device).div(255.0).view(1, 3, 1, 1)
            axis, short, long = (2, h, w) if w > h else (3, w, h)
            before = (long - short) // 2
            sizes = [before, long - short - before]
            pads = [fill.expand(b, 3, n, w) if axis == 2 else fill.expand(b, 3, h, n) for n in sizes]
            x = torch.cat([pads[0], x, pads[1]], dim=axis)
        return hf_clip_tensor(x, self.processor, quantize=quantize)

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Encoder ids before and after the image (``t5_tokenizer_image_token``, cut at 2048 in all)."""
        if prompt not in self._ids:
            text = self.template.format(self.question_template.format(prompt))
            chunks = text.split(IMAGE_TOKEN)
            if len(chunks) != 2:
                raise PromptError(f"the prompt must not contain {IMAGE_TOKEN!r} (t2v-metrics would insert a second "
                                  f"image there): {prompt[:80]!r}")
            before, after = (self.tokenizer(c)["input_ids"] for c in chunks)
            after = after[: max(0, CONTEXT_LEN - len(before) - 1)]
            self._ids[prompt] = (before, after)
            if len(self._ids) > 4096:
                self._ids.pop(next(iter(self._ids)))
        return self._ids[prompt]

    def answer_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(self.answer_template.format(prompt))["input_ids"][:CONTEXT_LEN]

    # -- model -------------------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.vision(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if self.select_feature == "patch":
            feats = feats[:, 1:]
        return self.projector(feats)

    def scores(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``exp(-mean NLL)`` of the answer tokens for each (image, prompt) row, float32 ``(B,)``.

        Rows are right-padded and masked (as the official batch), in groups of similar length so a
        long prompt does not make every row of the batch pay for its padding.
        """
        feats = self.image_features(pixels)
        rows, answers = [], []
        for b, prompt in enumerate(prompts):
            before, after = self.prompt_ids(prompt)
            dev = self.device
            rows.append(torch.cat([self.embed(torch.tensor(before, device=dev)), feats[b],
                                   self.embed(torch.tensor(after, device=dev))]))
            answers.append(self.answer_ids(prompt))
        out = torch.empty(len(rows), dtype=torch.float32, device=self.device)
        order = sorted(range(len(rows)), key=lambda i: rows[i].shape[0])
        group: list[int] = []
        for i in order + [None]:
            if group and (i is None or rows[i].shape[0] > 1.25 * rows[group[0]].shape[0] + 16):
                out[group] = self._answer_probability([rows[j] for j in group], [answers[j] for j in group])
                group = []
            if i is not None:
                group.append(i)
        return out

    def _answer_probability(self, rows: list[torch.Tensor], answers: list[list[int]]) -> torch.Tensor:
        feats = rows[0]
        width = max(r.shape[0] for r in rows)
        embeds = feats.new_zeros(len(rows), width, feats.shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for b, r in enumerate(rows):
            embeds[b, : r.shape[0]] = r
            mask[b, : r.shape[0]] = 1
        alen = max(len(a) for a in answers)
        labels = torch.full((len(rows), alen), -100, dtype=torch.long, device=self.device)
        for b, a in enumerate(answers):
            labels[b, : len(a)] = torch.tensor(a, device=self.device)
        decoder_mask = labels.ne(-100)
        decoder_ids = self.t5._shift_right(labels)
        logits = self.t5(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids,
                         decoder_attention_mask=decoder_mask, use_cache=False).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll = -(picked * decoder_mask).sum(1) / decoder_mask.sum(1)
        return nll.neg().exp().float()


def resolve_model(source: str) -> str:
    """t2v-metrics' model names (``clip-flant5-xxl``, ``qwen2.5-vl-7b``, ...) -> hub repositories; a local
    directory or any other name is returned unchanged."""
    if hub.is_local(source):
        return source
    return MODEL_ALIASES.get(source.lower(), source)


def model_type(source: str) -> tuple[str | None, Path]:
    """``(model_type of config.json, its path)`` of a model source."""
    path = hub.find_file(source, ["config.json"], what="VQAScore model config.json")
    return _read_json(path).get("model_type"), path


class VQAScore(Metric):
    """VQAScore in (0, 1): the VLM's probability of answering "Yes" (higher = the image shows the prompt).

    The model family follows ``model_type`` in the checkpoint's ``config.json``: ``clip_t5``
    (:class:`ClipT5`), ``qwen2_vl`` / ``qwen2_5_vl`` (:class:`~prefscore.metrics.vqascore_qwen.QwenVL`),
    ``llava`` with ``LlavaQwenForCausalLM`` / ``llava_onevision``
    (:class:`~prefscore.metrics.vqascore_llava_ov.LlavaOneVision`).
    """

    output_names = ("score",)
    default_batch_size = 8

    def __init__(self, spec, source: str, device="cpu", dtype="float32", **options):
        super().__init__(device, dtype)
        self.spec = spec
        self.options = VQAScoreOptions.from_kwargs(**options)
        source = DEFAULT_MODEL if source == spec.default_model else resolve_model(str(source))
        kind, config_path = model_type(source)
        if kind in QWEN_CLASSES:
            from .vqascore_qwen import ANSWER as QWEN_ANSWER, MODEL_FILES as QWEN_FILES
            from .vqascore_qwen import QUESTION as QWEN_QUESTION, QwenVL

            if self.options.clip_t5_only():
                raise ValueError(f"option(s) {', '.join(self.options.clip_t5_only())} apply to CLIP-FlanT5 only, not to "
                                 f"the {kind} model {source}")
            o = self.options
            directory = hub.local_dir(source, QWEN_FILES, what=f"{kind} config, weights, processor and tokenizer")
            self.model = QwenVL(directory, _read_json(config_path),
                                QWEN_QUESTION if o.question is None else o.question,
                                QWEN_ANSWER if o.answer is None else o.answer, self.device, self.dtype)
        elif kind in ("llava", "llava_qwen", "llava_onevision"):
            from .vqascore_llava_ov import LlavaOneVision, is_llava_ov_config

            config = _read_json(config_path)
            if not is_llava_ov_config(config):
                raise CheckpointError(f"{config_path}: a {kind!r} model that is not LLaVA-OneVision (architectures "
                                      f"{config.get('architectures')}); vqascore runs the lmms-lab LlavaQwenForCausalLM "
                                      "and llava-hf llava_onevision layouts")
            if self.options.conversation is not None:
                raise ValueError(f"option conversation applies to CLIP-FlanT5 only, not to the LLaVA-OneVision model {source}")
            directory = hub.local_dir(source, MODEL_FILES, what="LLaVA-OneVision config, weights and tokenizer")
            self.model = LlavaOneVision(source, config, directory, self.options, self.device, self.dtype)
        elif kind == "clip_t5":
            self.model = ClipT5(source, self.options, self.device, self.dtype)
        else:
            raise CheckpointError(f"{config_path}: model_type {kind!r} is not a VQAScore model; vqascore runs "
                                  f"t2v-metrics' CLIP-FlanT5 ('clip_t5'), Qwen2-VL / Qwen2.5-VL ('qwen2_vl', "
                                  f"'qwen2_5_vl') and LLaVA-OneVision ('llava' LlavaQwenForCausalLM, 'llava_onevision') checkpoints (names: {', '.join(MODEL_ALIASES)})")

    def preprocess(self, image, name):
        return self.model.preprocess(image, name)

    def preprocess_key(self):
        return self.model.preprocess_key()

    def preprocess_tensor(self, pixels, quantize: bool = True):
        """Differentiable twin of :meth:`preprocess` (``score_tensor``)."""
        hook = getattr(self.model, "preprocess_tensor", None)
        if hook is None:
            raise NotImplementedError(f"vqascore with {type(self.model).__name__} has no differentiable preprocessing")
        return hook(pixels, quantize)

    def forward(self, pixels, prompts):
        if prompts is None:
            raise PromptError("metric 'vqascore' scores an image against a prompt: pass prompts=")
        return self.model.scores(pixels, prompts)  # engines call it in inference mode; score_tensor with autograd

    def compare(self, images, prompt: str, *, temperature: float | None = None) -> np.ndarray:
        """``softmax(logit(s_i) / tau)`` over the candidates, tau = 1 by default.

        With ``s`` a probability of "Yes", ``sigmoid(logit s_a - logit s_b)`` is the Bradley-Terry
        preference of two independent yes/no judgements: the probability that ``a`` is the one judged
        to show the prompt, given that exactly one of the two is. For k candidates it is the
        probability that candidate i alone is judged to show it, given that exactly one is.
        """
        if not isinstance(prompt, str):
            raise PromptError("compare() takes one prompt (a string) shared by all candidate images")
        scores = np.asarray(self.score(list(images), prompt), dtype=np.float64)
        tau = 1.0 if temperature is None else float(temperature)
        s = np.clip(scores, 1e-300, 1.0 - 1e-16)
        logits = (np.log(s) - np.log1p(-s)) / tau
        logits -= logits.max()
        p = np.exp(logits)
        return p / p.sum()

    def preference_temperature(self) -> float:
        return 1.0


__all__ = ["ANSWER", "MODEL_ALIASES", "QUESTION", "VQAScore", "VQAScoreOptions", "ClipT5", "resolve_model"]
