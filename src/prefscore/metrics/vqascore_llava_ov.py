"""VQAScore with LLaVA-OneVision (``llava-onevision-qwen2-7b-ov`` / ``-si``), as t2v-metrics 3.0 computes it.

t2v-metrics' ``LLaVAOneVisionModel.forward`` runs the original LLaVA-NeXT code
(``load_pretrained_model(path, None, "llava_qwen")``) on the ``lmms-lab`` checkpoints:

* question ``Does this image show "{prompt}"? Answer the question with Yes or No`` in the
  ``qwen_1_5`` chat template: ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
  <|im_start|>user\\n<image>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n``; each chunk around
  ``<image>`` tokenised on its own (no BOS), the image features inserted at ``<image>``, the sequence
  cut at ``tokenizer_model_max_length`` of the config;
* image: ``Image.open(path).convert("RGB")`` -> LLaVA's ``process_anyres_image`` (the config's
  ``image_aspect_ratio`` is ``anyres_max_9``): the whole image resized (bicubic) to 384², then the image
  resized to fit the best ``image_grid_pinpoints`` resolution, centred on black and cut into 384² tiles;
  each tile through LLaVA's own SigLIP processor (384², mean = std = 0.5, not the tower repository's
  settings);
* t2v-metrics passes the resulting 4-D tile tensor on as a *video* (``data.dim() == 4``), so the
  tiles are encoded as frames: SigLIP-so400m (the checkpoint's tower with its last layer dropped, the
  hidden states without the post-layernorm), ``mlp2x_gelu`` projector, 27×27 -> 14×14 bilinear pooling of
  each tile, all tiles flattened and one ``image_newline`` token appended (``mm_newline_position``
  ``one_token``) -- not LLaVA-OneVision's unpadded anyres layout;
* score: the softmax of the next-token logits (over ``len(tokenizer)`` ids: the loader resizes the
  embeddings to the tokenizer) at ``tokenizer.encode("Yes")[0]``, i.e. ``outputs.scores[0]`` of a greedy
  one-token ``generate`` (no logits processor changes greedy scores).

The official loader runs the model in float16; ``dtype="float32"`` (default) is that computation in
float32. Weights come from the ``lmms-lab`` layout (``model.vision_tower.vision_tower.vision_model.*``,
``model.mm_projector.*``, ``model.image_newline``, ``model.layers.*``, ``lm_head``), the SigLIP tower's
architecture from ``mm_vision_tower`` (``google/siglip-so400m-patch14-384``) and the Qwen2 tokenizer from
the model directory. The ``llava-hf/llava-onevision-qwen2-*-hf`` layout (transformers' conversion of the same
weights) is read as well: its keys are mapped back and the lmms-lab ``mm_*`` settings of the published models used.
"""

from __future__ import annotations

import ast
import math
import re
import warnings

import numpy as np
import torch
from PIL import Image

from .. import hub
from ..preprocess import resize
from ..errors import CheckpointError, ModelSourceError
from .vqascore import _load_into, _read_json, build_projector, read_sharded

QUESTION = 'Does this image show "{}"? Answer the question with Yes or No'
ANSWER = "Yes"
IMAGE_TOKEN = "<image>"
TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + IMAGE_TOKEN
            + "\n{}<|im_end|>\n<|im_start|>assistant\n")
MODEL_FILES = ["config.json", "*.safetensors", "*.json", "merges.txt", "vocab.json"]
TOWER_FILES = ["config.json", "*.safetensors"]
TILE = 384  # LLaVA-NeXT's SigLipImageProcessor: 384², bicubic, rescale 1/255, mean = std = 0.5
GRID = 27  # LLaVA-NeXT's SigLipVisionTower: 27x27 = 729 patches per tile (asserted there)
TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."


def is_llava_ov_config(config: dict) -> bool:
    """An ``lmms-lab`` LLaVA-OneVision (LLaVA-NeXT ``llava_qwen``) or ``llava-hf`` (``llava_onevision``) config."""
    if config.get("model_type") == "llava_onevision":
        return True
    return config.get("model_type") in ("llava", "llava_qwen") and "LlavaQwenForCausalLM" in (config.get("architectures") or [])


#: what the lmms-lab ``config.json`` of the published models says and the llava-hf conversion drops
PUBLISHED_OV = {"mm_patch_merge_type": "spatial_unpad", "mm_newline_position": "one_token",
                "mm_spatial_pool_mode": "bilinear", "mm_projector_type": "mlp2x_gelu",
                "tokenizer_model_max_length": 32768}
HF_ADDED_TOKENS = ("<image>", "<video>")  # added by the llava-hf conversion after Qwen2's ids


def from_hf_layout(config: dict, state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict, dict]:
    """A ``llava-hf/llava-onevision-qwen2-*-hf`` checkpoint (transformers' conversion of the lmms-lab one: the
    same tensors under other names, the tower already without its last layer) as ``(lmms-lab style config,
    SigLIP config, lmms-lab state)``."""
    if config.get("vision_feature_layer", -1) != -1 or config.get("vision_feature_select_strategy", "full") != "full":
        raise CheckpointError(f"{source}: only vision_feature_layer -1 with strategy 'full' matches the lmms-lab model")
    text, vision = dict(config.get("text_config") or {}), dict(config.get("vision_config") or {})
    if not text or not vision:
        raise CheckpointError(f"{source}: a llava_onevision config.json needs text_config and vision_config")
    lmms = {**text, **PUBLISHED_OV, "image_aspect_ratio": config.get("vision_aspect_ratio", "anyres_max_9"),
            "image_grid_pinpoints": config.get("image_grid_pinpoints"), "mm_hidden_size": vision.get("hidden_size")}
    renames = [("model.vision_tower.", TOWER_PREFIX), ("vision_tower.", TOWER_PREFIX),
               ("model.multi_modal_projector.linear_1.", PROJECTOR_PREFIX + "0."),
               ("model.multi_modal_projector.linear_2.", PROJECTOR_PREFIX + "2."),
               ("multi_modal_projector.linear_1.", PROJECTOR_PREFIX + "0."),
               ("multi_modal_projector.linear_2.", PROJECTOR_PREFIX + "2."),
               ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
               ("model.language_model.", "model."), ("image_newline", "model.image_newline"),
               ("model.image_newline", "model.image_newline")]
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return lmms, vision, out


def select_best_resolution(size: tuple[int, int], resolutions) -> tuple[int, int]:
    """LLaVA's choice of grid: the most effective pixels, then the least waste; ``(width, height)``."""
    w0, h0 = size
    best, max_eff, min_waste = None, 0, float("inf")
    for w, h in resolutions:
        scale = min(w / w0, h / h0)
        eff = min(int(w0 * scale) * int(h0 * scale), w0 * h0)
        waste = w * h - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            max_eff, min_waste, best = eff, waste, (w, h)
    return best


def resize_and_pad(image: Image.Image, target: tuple[int, int], name: str = "<image>") -> Image.Image:
    """Fit ``image`` into ``target`` (bicubic, aspect kept, ceil), centred on black."""
    w0, h0 = image.size
    tw, th = target
    if tw / w0 < th / h0:
        nw, nh = tw, min(math.ceil(h0 * tw / w0), th)
    else:
        nw, nh = min(math.ceil(w0 * th / h0), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resize(image, (nw, nh), Image.BICUBIC, name), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def grid_pinpoints(value) -> list[list[int]]:
    """``image_grid_pinpoints`` as a list of ``[width, height]``: a list, its string, or ``"(1x1),...,(6x6)"``."""
    if isinstance(value, str) and "x" in value:
        found = re.findall(r"\((\d+)x(\d+)\)", value)
        (a0, b0), (a1, b1) = map(int, found[0]), map(int, found[-1])
        return [[i * TILE, j * TILE] for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    return list(value) if isinstance(value, list) else ast.literal_eval(value)


def siglip_pixels(tile: Image.Image) -> np.ndarray:
    """LLaVA-NeXT's ``SigLipImageProcessor`` on a 384² RGB tile: float32 CHW in [-1, 1]."""
    x = (np.asarray(tile, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return x.transpose(2, 0, 1)


class LlavaOneVision:
    """LLaVA-OneVision (lmms-lab layout) on transformers 5 primitives: ``SiglipVisionModel`` + projector +
    ``Qwen2ForCausalLM``, with LLaVA-NeXT's tiling and t2v-metrics' frame pooling."""

    def __init__(self, source: str, config: dict, directory, options, device: torch.device, dtype: torch.dtype):
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

        self.source, self.device, self.dtype = source, device, dtype
        state = read_sharded(directory)
        hf_layout = config.get("model_type") == "llava_onevision"
        if hf_layout:
            config, tower_config, state = from_hf_layout(config, state, source)
        aspect = str(config.get("image_aspect_ratio", ""))
        if not (aspect == "anyres" or "anyres_max" in aspect):
            raise CheckpointError(f"{source}: image_aspect_ratio {aspect!r} is not supported (the published "
                                  "LLaVA-OneVision models use anyres_max_9)")
        self.pinpoints = [tuple(map(int, p)) for p in grid_pinpoints(config.get("image_grid_pinpoints"))]
        self.merge = str(config.get("mm_patch_merge_type", "flat"))
        self.newline = str(config.get("mm_newline_position", "one_token"))
        self.pool_mode = str(config.get("mm_spatial_pool_mode", "average"))
        if not (self.merge == "flat" or self.merge.startswith("spatial")):
            raise CheckpointError(f"{source}: unknown mm_patch_merge_type {self.merge!r}")
        if self.merge.startswith("spatial") and self.newline not in ("one_token", "no_token"):
            raise CheckpointError(f"{source}: mm_newline_position {self.newline!r} is not supported (one_token, no_token)")
        if self.pool_mode not in ("average", "max", "bilinear"):
            raise CheckpointError(f"{source}: unknown mm_spatial_pool_mode {self.pool_mode!r}")
        if config.get("mm_vision_select_layer", -2) != -2 or config.get("mm_vision_select_feature", "patch") != "patch":
            raise CheckpointError(f"{source}: LLaVA-NeXT's SigLIP tower ignores mm_vision_select_layer/feature; "
                                  "only the published -2 / patch are supported")
        self.max_len = config.get("tokenizer_model_max_length")

        tok_source = options.tokenizer or str(directory)
        tok_dir = hub.local_dir(tok_source, ["tokenizer*.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                                             "added_tokens.json"], what="Qwen2 tokenizer")
        try:
            with warnings.catch_warnings():  # AutoTokenizer reads config.json; its rope_scaling: null is harmless
                warnings.filterwarnings("ignore", message=".*rope_scaling.*", category=FutureWarning)
                self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{tok_source}: cannot load the Qwen2 tokenizer: {exc}") from None
        # the official loader resizes the embeddings to the lmms-lab tokenizer (Qwen2's ids)
        self.n_tokens = len(self.tokenizer) - (sum(t in self.tokenizer.get_vocab() for t in HF_ADDED_TOKENS) if hf_layout else 0)

        tower_source, tower_dir = source, None
        if not hf_layout:
            tower_source = options.vision_tower or str(config.get("mm_vision_tower", ""))
            tower_dir = hub.local_dir(tower_source, TOWER_FILES, what="SigLIP vision tower config")
            tower_config = _read_json(tower_dir / "config.json")
            if tower_config.get("model_type") == "siglip":
                tower_config = tower_config.get("vision_config", tower_config)
        fields = {k: tower_config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                               "image_size", "patch_size", "hidden_act", "layer_norm_eps",
                                               "num_channels") if k in tower_config}
        vision_config = SiglipVisionConfig(**fields)
        if (vision_config.image_size // vision_config.patch_size) != GRID:
            raise CheckpointError(f"{tower_source}: LLaVA-NeXT's SigLIP tower needs 729 patches per 384² tile "
                                  f"(image_size {vision_config.image_size}, patch_size {vision_config.patch_size})")
        if not hf_layout:
            vision_config.num_hidden_layers -= 1  # the official tower drops its last layer (llava-hf: already)
        vision_config.vision_use_head = False
        self.vision = SiglipVisionModel(vision_config)
        tower_state = {k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
        if not tower_state and tower_dir is not None:
            tower_state = {k: v for k, v in read_sharded(tower_dir).items() if k.startswith("vision_model.")}
        if not tower_state:
            raise ModelSourceError(f"{source}: no SigLIP weights in the checkpoint nor in {tower_source}")
        if not any(k.startswith("vision_model.") for k in self.vision.state_dict()):  # transformers 5 layout
            tower_state = {k.removeprefix("vision_model."): v for k, v in tower_state.items()}
        _load_into(self.vision, tower_state, "SigLIP vision tower", source, optional=("position_ids",))

        qwen_fields = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                              "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                                              "hidden_act", "vocab_size") if k in config}
        qwen_config = Qwen2Config(**qwen_fields, tie_word_embeddings=False, use_sliding_window=False,
                                  attention_dropout=0.0)
        vocab = int(qwen_config.vocab_size)
        if self.n_tokens > vocab:
            raise CheckpointError(f"{source}: the tokenizer has {self.n_tokens} ids but the checkpoint only {vocab} "
                                  "embeddings (the official loader would add randomly initialised rows)")
        qwen_config.vocab_size = self.n_tokens  # the official loader's resize_token_embeddings(len(tokenizer))
        self.llm = Qwen2ForCausalLM(qwen_config)
        llm_state = {k: v for k, v in state.items() if not k.startswith((TOWER_PREFIX, PROJECTOR_PREFIX))
                     and k != "model.image_newline"}
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key not in llm_state:
                raise CheckpointError(f"{source}: no {key} in the checkpoint")
            llm_state[key] = llm_state[key][: self.n_tokens]
        _load_into(self.llm, llm_state, "Qwen2 language model", source, optional=("rotary_emb.inv_freq",))

        self.projector = build_projector(config, int(config.get("mm_hidden_size", vision_config.hidden_size)),
                                         int(qwen_config.hidden_size))
        _load_into(self.projector, {k[len(PROJECTOR_PREFIX):]: v for k, v in state.items()
                                    if k.startswith(PROJECTOR_PREFIX)}, "projector", source)
        if "model.image_newline" not in state and "unpad" in self.merge:
            raise CheckpointError(f"{source}: no model.image_newline in the checkpoint")
        self.image_newline = state.get("model.image_newline")
        if self.image_newline is not None:
            self.image_newline = self.image_newline.to(device=device, dtype=dtype)
        for module in (self.vision, self.projector, self.llm):
            module.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.embed = self.llm.get_input_embeddings()
        self.question_template = QUESTION if options.question is None else options.question
        self.answer_template = ANSWER if options.answer is None else options.answer
        self._ids: dict[str, list[list[int]]] = {}

    # -- inputs ------------------------------------------------------------------------------------
    def preprocess(self, image, name: str) -> torch.Tensor:
        """``convert("RGB")`` -> LLaVA's ``process_anyres_image``: ``(1 + tiles, 3, 384, 384)`` float32."""
        from ..images import to_rgb

        image = to_rgb(image, name)
        best = select_best_resolution(image.size, self.pinpoints)
        padded = resize_and_pad(image, best, name)
        tiles = [resize(image, (TILE, TILE), Image.BICUBIC, name)]
        tiles += [padded.crop((x, y, x + TILE, y + TILE)) for y in range(0, padded.height, TILE)
                  for x in range(0, padded.width, TILE)]
        return torch.from_numpy(np.stack([siglip_pixels(t) for t in tiles]))

    def preprocess_key(self) -> tuple:
        return ("vqascore-llava-anyres", tuple(self.pinpoints))

    def prompt_ids(self, prompt: str) -> list[list[int]]:
        """Token ids of the chunks around each ``<image>`` (``tokenizer_image_token``)."""
        if prompt not in self._ids:
            text = TEMPLATE.format(self.question_template.format(prompt))
            self._ids[prompt] = [self.tokenizer(c)["input_ids"] for c in text.split(IMAGE_TOKEN)]
            if len(self._ids) > 4096:
                self._ids.pop(next(iter(self._ids)))
        return self._ids[prompt]

    def answer_id(self, prompt: str) -> int:
        ids = self.tokenizer.encode(self.answer_template.format(prompt))
        if not ids:
            raise CheckpointError(f"the answer {self.answer_template.format(prompt)!r} has no tokens")
        return ids[0]

    # -- model -------------------------------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tiles ``(B, T, 3, 384, 384)`` -> token features ``(B, N, D)``, as t2v-metrics' video path builds them."""
        b, t = pixels.shape[:2]
        out = self.vision(pixel_values=pixels.flatten(0, 1).to(self.device, self.dtype), output_hidden_states=True)
        feats = self.projector(out.hidden_states[-1])  # (B*T, 729, D), pre post-layernorm
        d = feats.shape[-1]
        grid = feats.view(b * t, GRID, GRID, d).permute(0, 3, 1, 2)
        if self.pool_mode == "bilinear":
            grid = torch.nn.functional.interpolate(grid, size=[math.ceil(GRID / 2)] * 2, mode="bilinear")
        elif self.pool_mode == "average":
            grid = torch.nn.functional.avg_pool2d(grid, 2)
        else:
            grid = torch.nn.functional.max_pool2d(grid, 2)
        feats = grid.permute(0, 2, 3, 1).reshape(b, -1, d)
        if self.merge.startswith("spatial") and self.newline == "one_token" and "unpad" in self.merge:
            feats = torch.cat([feats, self.image_newline.expand(b, 1, d)], dim=1)
        return feats

    def scores(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """P(answer's first token | image, question) for each row, float32 ``(B,)``."""
        rows, answers = [], []
        features = self.image_features(pixels)
        for feats, prompt in zip(features, prompts):
            parts = []
            for k, ids in enumerate(self.prompt_ids(prompt)):
                if k:
                    parts.append(feats)
                parts.append(self.embed(torch.tensor(ids, dtype=torch.long, device=self.device)))
            row = torch.cat(parts)
            rows.append(row[: self.max_len] if self.max_len else row)
            answers.append(self.answer_id(prompt))
        width = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for b, r in enumerate(rows):
            embeds[b, : r.shape[0]] = r
            mask[b, : r.shape[0]] = 1
        hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(rows), device=self.device), mask.sum(1) - 1]
        probs = torch.softmax(self.llm.lm_head(last).float(), dim=-1)
        return probs[torch.arange(len(rows), device=self.device), torch.tensor(answers, device=self.device)]


__all__ = ["ANSWER", "QUESTION", "LlavaOneVision", "is_llava_ov_config"]
