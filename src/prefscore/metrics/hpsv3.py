"""HPSv3 (Ma, Shui et al., ICCV 2025): a Qwen2-VL-7B-Instruct reward model with an uncertainty head.

Reproduces the official package (``hpsv3`` 1.0.0, ``HPSv3RewardInferencer.reward``) on transformers 5's
native Qwen2-VL modules:

* **Image** (:mod:`prefscore.backbones.qwen2vl`): Pillow ``convert("RGB")`` of the stored image (alpha
  dropped, no EXIF rotation), then ``smart_resize`` (``hpsv3/dataset/utils.py``) with
  ``min_pixels = max_pixels = 256 * 28 * 28``: both
  sides rounded to multiples of 28 and the area brought to about 200 704 pixels, keeping the aspect
  ratio; Pillow bicubic on 8-bit RGB. The Qwen2-VL image processor then applies its own ``smart_resize``
  (a no-op on these sizes), ``* 1/255`` (float64 stored as float32), the OpenAI CLIP mean/std, and cuts
  14x14 patches repeated over 2 frames, grouped in 2x2 merge windows.
* **Text**: the user turn is the image then ``INSTRUCTION.format(text_prompt=prompt)`` followed by
  ``"\\nPlease provide the overall ratings of this image: <|Reward|>\\n\\nEND\\n"``
  (``hpsv3/dataset/data_collator_qwen.py``), rendered with the Qwen2-VL chat template and the
  generation prompt, tokenised with the Qwen2 tokenizer plus the added special token ``<|Reward|>``;
  ``<|image_pad|>`` stands for the ``grid_h * grid_w / 4`` merged visual tokens.
* **Model**: the vision tower's merged features replace the image tokens; the language model runs
  with *sequential* positions (the official forward calls the text model with ``position_ids=None``,
  so M-RoPE's image positions are not used); the ``ranknet`` head
  ``Linear(H, 1024) - ReLU - Dropout - Linear(1024, 16) - ReLU - Linear(16, 2)`` (kept in float32, as
  the official code) reads the final hidden state at the ``<|Reward|>`` token. Its two outputs are
  ``mu`` (the score: "we select miu as the final output") and ``log sigma``.

``score`` returns ``(N, 2)``: ``mu`` and ``sigma = exp(log sigma)``. ``compare`` uses the training
loss's model of a preference (see :func:`preference_probabilities`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import hub
from ..backbones.qwen2vl import (IMAGE_TOKEN, QwenVisionSettings, compile_template, load_tokenizer, qwen_pixels,
                                 qwen_pixels_tensor, template_from)
from ..base import Metric
from ..errors import CheckpointError, ModelSourceError, PromptError
from ..images import ImageInput

DEFAULT_MODEL = "MizzenAI/HPSv3"
DEFAULT_BASE = "Qwen/Qwen2-VL-7B-Instruct"
CHECKPOINT = "HPSv3.safetensors"
REWARD_TOKEN = "<|Reward|>"
#: ``hpsv3/inference.py``: ``min_pixels = max_pixels = 256 * 28 * 28``
PIXELS = 256 * 28 * 28

INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. 

**Visual Quality:**  
Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

**Text Alignment:**  
Assess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""
RATING_REQUEST = """
Please provide the overall ratings of this image: <|Reward|>

END
"""


def user_text(prompt: str) -> str:
    """The text of the user turn after the image (``use_special_tokens: true``)."""
    return INSTRUCTION.format(text_prompt=prompt) + RATING_REQUEST


# -- preference ----------------------------------------------------------------------------------
def preference_probabilities(mu: np.ndarray, sigma: np.ndarray, temperature: float = 1.0,
                             samples: int = 1 << 15, seed: int = 0) -> np.ndarray:
    """``P_i = E[softmax(r / tau)_i]`` with independent ``r_j ~ N(mu_j, sigma_j^2)``.

    HPSv3's uncertainty loss (``VLMRewardTrainer.compute_loss``, ``loss_type="uncertainty"``) treats
    each reward as Gaussian, ``r ~ N(mu, sigma^2)`` with ``sigma = exp(logits[:, 1])``, and the
    preference of A over B given the rewards as ``sigmoid(r_A - r_B)``; so the probability it models
    for a pair is ``E[sigmoid(z)]``, ``z ~ N(mu_A - mu_B, sigma_A^2 + sigma_B^2)`` (the loss itself
    is the Monte-Carlo mean of ``-log sigmoid(z)`` over 1000 draws). For k candidates the same model
    with the Bradley-Terry softmax gives this expectation; for k = 2 it is exactly the pair
    probability, and with ``sigma = 0`` it is ``softmax(mu / tau)``. Computed with a fixed scrambled
    Sobol sequence (deterministic; error about 1e-5 at the default ``samples``).
    """
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    k = len(mu)
    if k == 0:
        return np.zeros(0)
    engine = torch.quasirandom.SobolEngine(k, scramble=True, seed=seed)
    u = engine.draw(samples, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    eps = math.sqrt(2.0) * torch.erfinv(2 * u - 1)
    r = (torch.from_numpy(mu) + torch.from_numpy(sigma) * eps) / float(temperature)
    return torch.softmax(r, dim=-1).mean(0).numpy()


# -- checkpoint ----------------------------------------------------------------------------------
def map_key(key: str) -> str | None:
    """Official (transformers 4.45 ``Qwen2VLRewardModelBT``) key -> prefscore module key; None: unused.

    ``model.*`` (the text model) -> ``backbone.language_model.*``; ``visual.*`` -> ``backbone.visual.*``;
    ``rm_head.*`` kept; ``lm_head`` dropped (the reward never reads the vocabulary logits). Keys already in
    transformers 5's layout (``model.language_model.*``, ``model.visual.*``) are accepted too.
    """
    if key.startswith("lm_head."):
        return None
    if key.startswith("rm_head."):
        return key
    for old, new in (("model.language_model.", "backbone.language_model."), ("model.visual.", "backbone.visual."),
                     ("visual.", "backbone.visual."), ("model.", "backbone.language_model.")):
        if key.startswith(old):
            return new + key[len(old):]
    return f"<unknown>{key}"


class RewardHead(nn.Sequential):
    """The ``ranknet`` head with the official default sizes ``H -> 1024 -> 16 -> 2`` (indices 0, 3, 5)."""

    def __init__(self, hidden: int, inner: int = 1024, small: int = 16, out: int = 2):
        super().__init__(nn.Linear(hidden, inner), nn.ReLU(), nn.Dropout(0.05), nn.Linear(inner, small), nn.ReLU(),
                         nn.Linear(small, out))


class HPSv3Model(nn.Module):
    """transformers 5 ``Qwen2VLModel`` (vision tower + language model) and the reward head."""

    def __init__(self, config, head_sizes: tuple[int, int, int]):
        super().__init__()
        from transformers import Qwen2VLModel

        self.backbone = Qwen2VLModel(config)
        self.rm_head = RewardHead(config.text_config.hidden_size, *head_sizes)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"{path}: cannot read: {exc}") from None


def build_model(state: dict[str, torch.Tensor], config_dict: dict, source: str, dtype: torch.dtype) -> HPSv3Model:
    """The reward model from an official state dict, keys mapped in memory; shapes checked with names.

    ``state`` is consumed (emptied) so that a 7B checkpoint is never held twice: each tensor is freed
    once converted to ``dtype`` (the head stays float32, as the official code keeps it).
    """
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding, Qwen2VLVisionRotaryEmbedding

    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key in list(state):
        value = state.pop(key)
        new = map_key(key)
        if new is None:
            continue
        if new.startswith("<unknown>"):
            unknown.append(key)
            continue
        mapped[new] = value
    if unknown:
        raise CheckpointError(f"{source}: unexpected tensors {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''}: not an HPSv3 (Qwen2-VL reward model) checkpoint")
    embed = mapped.get("backbone.language_model.embed_tokens.weight")
    heads = [mapped.get(f"rm_head.{i}.weight") for i in (0, 3, 5)]
    if embed is None or any(h is None for h in heads):
        missing = [k for k, v in [("model.embed_tokens.weight", embed)] + [(f"rm_head.{i}.weight", h) for i, h in zip((0, 3, 5), heads)] if v is None]
        raise CheckpointError(f"{source}: no {', '.join(missing)}: not an HPSv3 checkpoint (expected the official "
                              "Qwen2VLRewardModelBT state dict with the 'ranknet' head)")
    config_dict = dict(config_dict)
    config_dict["vocab_size"] = int(embed.shape[0])  # the official code resizes the embeddings to the tokenizer (+<|Reward|>)
    if isinstance(config_dict.get("text_config"), dict):
        config_dict["text_config"] = dict(config_dict["text_config"], vocab_size=int(embed.shape[0]))
    config = Qwen2VLConfig(**{k: v for k, v in config_dict.items() if k not in ("architectures", "transformers_version")})
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    sizes = (int(heads[0].shape[0]), int(heads[1].shape[0]), int(heads[2].shape[0]))
    if sizes[2] != 2:
        raise CheckpointError(f"{source}: rm_head.5.weight has {sizes[2]} outputs; HPSv3's head gives 2 (mu, log sigma)")
    with torch.device("meta"):
        model = HPSv3Model(config, sizes)
    expected = model.state_dict()
    problems = []
    for key, param in expected.items():
        if key not in mapped:
            problems.append(f"missing {_official_name(key)}")
        elif tuple(mapped[key].shape) != tuple(param.shape):
            problems.append(f"{_official_name(key)}: checkpoint {tuple(mapped[key].shape)} vs model {tuple(param.shape)} "
                            f"(from config.json)")
    extra = sorted(set(mapped) - set(expected))
    problems += [f"unexpected {_official_name(k)}" for k in extra]
    if problems:
        raise CheckpointError(f"{source}: the checkpoint does not fit the Qwen2-VL config: " + "; ".join(problems[:6])
                              + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else ""))
    converted = {}
    for key in list(mapped):
        converted[key] = mapped.pop(key).to(torch.float32 if key.startswith("rm_head.") else dtype)
    model.load_state_dict(converted, strict=True, assign=True)
    # non-persistent rotary buffers were made on the meta device: rebuild them on the CPU
    model.backbone.language_model.rotary_emb = Qwen2VLRotaryEmbedding(config=config.text_config)
    model.backbone.visual.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(config.vision_config)
    return model.eval()


def _official_name(key: str) -> str:
    if key.startswith("backbone.language_model."):
        return "model." + key[len("backbone.language_model."):]
    if key.startswith("backbone.visual."):
        return key[len("backbone."):]
    return key


# -- tokens --------------------------------------------------------------------------------------
class PromptTokens:
    """Qwen2 tokenizer (``tokenizer.json``) + ``<|Reward|>`` and the chat template, cached per prompt."""

    def __init__(self, tokenizer_file: Path, template: str, maxsize: int = 4096):
        from tokenizers import AddedToken

        self.tokenizer = load_tokenizer(tokenizer_file)
        # the official code: tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})
        if self.tokenizer.token_to_id(REWARD_TOKEN) is None:
            self.tokenizer.add_special_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)])
        self.reward_id = self.tokenizer.token_to_id(REWARD_TOKEN)
        self.image_id = self.tokenizer.token_to_id(IMAGE_TOKEN)
        if self.image_id is None:
            raise ModelSourceError(f"{tokenizer_file}: the tokenizer has no {IMAGE_TOKEN} token (not a Qwen2-VL tokenizer)")
        self.template = compile_template(template)
        self.maxsize = maxsize
        self._cache: OrderedDict[str, tuple[list[int], int, int]] = OrderedDict()

    def render(self, prompt: str) -> str:
        """The official text: the chat template on ``[image, user_text(prompt)]`` with the generation prompt."""
        messages = [{"role": "user", "content": [
            {"type": "image", "image": "", "min_pixels": PIXELS, "max_pixels": PIXELS},
            {"type": "text", "text": user_text(prompt)}]}]
        return self.template.render(messages=messages, add_generation_prompt=True)

    def ids(self, prompt: str) -> tuple[list[int], int, int]:
        """``(ids with one image token, index of that token, index of the template's <|Reward|>)``."""
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        ids = self.tokenizer.encode(self.render(prompt), add_special_tokens=True).ids
        image_at = [i for i, t in enumerate(ids) if t == self.image_id]
        reward_at = [i for i, t in enumerate(ids) if t == self.reward_id]
        if not image_at or not reward_at:
            raise PromptError("the chat template did not place the image and <|Reward|> tokens (not a Qwen2-VL template?)")
        if len(image_at) > 1:
            raise PromptError(f"the prompt contains the image token {IMAGE_TOKEN}; the official processor would give it "
                              "another image's features: remove it from the prompt")
        hit = (ids, image_at[0], reward_at[-1])
        self._cache[prompt] = hit
        while len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return hit


# -- the metric ----------------------------------------------------------------------------------
class HPSv3(Metric):
    """HPSv3 reward of images for a prompt.

    ``score(images, prompts)`` returns ``(N, 2)`` float64: column ``mu`` (the HPSv3 score, unbounded,
    higher is better; the HPSv3 README's generator means run from about -0.2 for SD2 to 10.6 for
    Kolors) and column ``sigma`` (> 0, the model's uncertainty of ``mu``).
    ``compare(images, prompt)`` gives the probability that each candidate is preferred.

    Options: ``base`` (source of the Qwen2-VL ``config.json``, ``preprocessor_config.json``,
    ``tokenizer.json`` and chat template when the model directory does not hold them; default
    ``Qwen/Qwen2-VL-7B-Instruct``, as the official code), ``checkpoint`` (weights file name, default
    ``HPSv3.safetensors``).
    """

    output_names = ("mu", "sigma")
    default_batch_size = 4

    def __init__(self, spec, source: str, device="cpu", dtype="float32", base: str = DEFAULT_BASE,
                 checkpoint: str = CHECKPOINT):
        super().__init__(device, dtype)
        self.spec = spec
        self.source = DEFAULT_MODEL if source == spec.default_model else str(source)
        self.base = str(base)
        weights = hub.find_file(self.source, [checkpoint, "model.pth"] if checkpoint == CHECKPOINT else [checkpoint],
                                what="HPSv3 reward model weights")
        small = self._small_files()
        config = _read_json(small["config.json"])
        self.settings = QwenVisionSettings(_read_json(small["preprocessor_config.json"]))
        self.tokens = PromptTokens(small["tokenizer.json"], self._chat_template())
        self.model = build_model(_load_state(weights, self.source), config, self.source, self.dtype).to(self.device)
        self.image_token_id = int(self.model.backbone.config.image_token_id)
        if self.image_token_id != self.tokens.image_id:
            raise CheckpointError(f"{self.source}: config.json's image_token_id {self.image_token_id} is not the "
                                  f"tokenizer's {IMAGE_TOKEN} ({self.tokens.image_id})")
        vocab = self.model.backbone.language_model.embed_tokens.weight.shape[0]
        if self.tokens.reward_id >= vocab:
            raise CheckpointError(f"{self.source}: <|Reward|> is token {self.tokens.reward_id} but the checkpoint embeds "
                                  f"{vocab} tokens: tokenizer and weights do not belong together")
        merge = self.model.backbone.config.vision_config.spatial_merge_size
        if merge != self.settings.merge:
            raise CheckpointError(f"{self.source}: vision spatial_merge_size {merge} != processor merge_size {self.settings.merge}")

    # -- sources ---------------------------------------------------------------------------------
    SMALL_FILES = ("config.json", "preprocessor_config.json", "tokenizer.json")
    TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json")

    def _small_files(self) -> dict[str, Path]:
        """Each small file from the model directory if it has it, else from ``base`` (the Qwen repo)."""
        local = Path(self.source).expanduser() if hub.is_local(self.source) else None
        found: dict[str, Path] = {}
        for name in self.SMALL_FILES:
            if local is not None and (local / name).is_file():
                found[name] = local / name
            else:
                found[name] = hub.find_file(self.base, [name], what=f"Qwen2-VL {name} (HPSv3's base model)")
        return found

    def _chat_template(self) -> str:
        """The chat template: ``chat_template.jinja``, ``chat_template.json`` or ``tokenizer_config.json``'s,
        from the model directory first, else from ``base``."""
        local = Path(self.source).expanduser() if hub.is_local(self.source) else None
        for where in ([local] if local is not None else []) + [self.base]:
            for name in self.TEMPLATE_FILES:
                if isinstance(where, Path):
                    path = where / name if (where / name).is_file() else None
                else:
                    try:
                        path = hub.find_file(where, [name], what=f"Qwen2-VL chat template ({name})")
                    except ModelSourceError:
                        path = None
                template = template_from(path) if path is not None else None
                if template is not None:
                    return template
        raise ModelSourceError(f"{self.source}: no chat template (chat_template.jinja, chat_template.json or "
                               f"tokenizer_config.json) here or in {self.base}")

    # -- Metric hooks --------------------------------------------------------------------------------
    def preprocess(self, image, name: str) -> torch.Tensor:
        return qwen_pixels(image, self.settings, (PIXELS, PIXELS), name)

    def preprocess_key(self):
        return ("hpsv3", PIXELS) + self.settings.key()

    def preprocess_tensor(self, pixels: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Differentiable twin of :meth:`preprocess` for RGB ``(B, 3, H, W)`` in [0, 1] (one size per batch)."""
        return qwen_pixels_tensor(pixels, self.settings, (PIXELS, PIXELS), quantize)

    def preference_temperature(self) -> float:
        return 1.0  # rewards enter sigmoid(r_A - r_B) unscaled in the loss

    def forward(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """``(B, H/28, W/28, 2, 2, D)`` patches of one image size + prompts -> ``(B, 2)``: mu, sigma."""
        if prompts is None:
            raise PromptError("metric 'hpsv3' scores an image against a prompt: pass prompts=")
        bb = self.model.backbone
        b, gh, gw, m = pixels.shape[0], pixels.shape[1], pixels.shape[2], pixels.shape[3]
        grid = torch.tensor([[1, gh * m, gw * m]] * b, dtype=torch.long, device=pixels.device)
        vision_dtype = bb.visual.get_dtype()
        vision = bb.visual(pixels.reshape(-1, pixels.shape[-1]).to(vision_dtype), grid_thw=grid)
        image_embeds = getattr(vision, "pooler_output", vision)  # merged features (transformers 5: pooler_output)
        n_image = gh * gw
        rows, rewards = [], []
        for p in prompts:
            ids, image_at, reward_at = self.tokens.ids(p)
            rows.append(ids[:image_at] + [self.image_token_id] * n_image + ids[image_at + 1:])
            rewards.append(reward_at + n_image - 1)
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        input_ids, mask = input_ids.to(pixels.device), mask.to(pixels.device)
        embeds = bb.language_model.embed_tokens(input_ids)
        image_mask = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(image_mask, image_embeds.to(embeds.dtype))
        # the official forward passes position_ids=None to the text model: positions 0..L-1 on all 3 M-RoPE axes
        positions = torch.arange(width, device=pixels.device).view(1, 1, -1).expand(3, b, -1)
        hidden = bb.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                   use_cache=False).last_hidden_state
        at = torch.tensor(rewards, device=hidden.device)
        out = self.model.rm_head(hidden[torch.arange(b, device=hidden.device), at].float())
        return torch.stack([out[:, 0], out[:, 1].exp()], dim=-1)

    @torch.inference_mode()
    def compare(self, images: Sequence[ImageInput], prompt: str, *, temperature: float | None = None) -> np.ndarray:
        """Probability that people prefer each candidate for ``prompt``, under HPSv3's own uncertainty model.

        ``E[softmax(r / tau)]`` with ``r_i ~ N(mu_i, sigma_i^2)`` independent
        (:func:`preference_probabilities`): for two images ``E[sigmoid(r_a - r_b)]``, the pair
        probability of the uncertainty loss HPSv3 was trained with. ``temperature`` (default 1)
        divides the rewards.
        """
        if not isinstance(prompt, str):
            raise PromptError("compare() takes one prompt (a string) shared by all candidate images")
        scores = np.asarray(self.score(list(images), prompt), dtype=np.float64).reshape(-1, 2)
        tau = self.preference_temperature() if temperature is None else float(temperature)
        return preference_probabilities(scores[:, 0], scores[:, 1], tau)


def _load_state(path: Path, source: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{source}: cannot read {path.name}: {exc}") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{source}: cannot read {path.name}: {exc}") from None
    return state["model"] if isinstance(state, dict) and "model" in state else state


__all__ = ["HPSv3", "INSTRUCTION", "PIXELS", "RATING_REQUEST", "map_key", "preference_probabilities", "user_text"]
