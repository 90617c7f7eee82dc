"""VQAScore on Qwen2-VL / Qwen2.5-VL, as t2v-metrics 3.0's ``Qwen2VLModel.forward`` computes it.

The score of an (image, prompt) pair is the probability of the first token of the answer (``"Yes"``) as the
next token after

``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n``
``<|vision_start|><|image_pad|>...<|vision_end|>Does this image show "{prompt}"?<|im_end|>\\n<|im_start|>assistant\\n``

(the model's chat template with the generation prompt; ``question`` / ``answer`` options replace the
t2v-metrics defaults ``Does this image show "{}"?`` / ``Yes``). Step by step, as the official code:

* image: ``Image.open(path).convert("RGB")``; ``qwen_vl_utils.fetch_image`` (0.0.11) resizes it with Pillow's
  default (bicubic) to ``smart_resize(h, w)`` at its default budget of 3136 to 12 845 056 pixels (sides
  multiples of 28); the Qwen2-VL image processor (``preprocessor_config.json``) applies its own
  ``smart_resize`` (a no-op at the published settings), ``* 1/255``, the OpenAI CLIP mean/std and cuts
  14x14 patches (2 frames, 2x2 merge windows); the prompt holds ``grid_h * grid_w / 4`` image tokens;
* model: transformers' ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (chosen
  by ``model_type`` in ``config.json``), M-RoPE positions over the image grid;
* score: the official code calls ``generate(max_new_tokens=1, do_sample=False, output_scores=True)`` and
  reads ``softmax(scores[0])[answer_id]``; those scores are the last position's logits (float32) after the
  logits processors of the model's ``generation_config.json``. With ``do_sample=False`` only the
  non-sampling ones act; the published Instruct models set ``repetition_penalty: 1.05``, so every token of
  the input (image tokens and chat markup included) has its logit divided by 1.05 (multiplied when
  negative) before the softmax over the whole vocabulary (``vocab_size`` rows of ``lm_head``).
  ``answer_id = tokenizer.encode(answer)[0]``.

The official code loads the model in bfloat16 with flash-attention 2 and scores one pair per call;
prefscore's default ``dtype="float32"`` is the same computation in float32 (``dtype="bfloat16"`` is the
official setting), with SDPA attention, pairs batched per image size (right padding, masked), the vision tower
run once per distinct image of a batch.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..backbones.qwen2vl import (IMAGE_TOKEN, MAX_PIXELS, MIN_PIXELS, QwenVisionSettings, compile_template,
                                 grid_of, load_tokenizer, qwen_pixels, qwen_pixels_tensor, read_chat_template)
from ..errors import CheckpointError, ModelSourceError, PromptError
from .vqascore import _read_json

QUESTION = 'Does this image show "{}"?'
ANSWER = "Yes"
#: ``qwen_vl_utils.fetch_image``'s pixel budget (t2v-metrics sets none for images)
FIRST_PIXELS = (MIN_PIXELS, MAX_PIXELS)
#: config.json ``model_type`` -> transformers class
MODEL_CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
MODEL_FILES = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.json", "chat_template.jinja", "*.safetensors",
               "model.safetensors.index.json"]
#: generation_config.json fields whose logits processors transformers 4.49 builds with do_sample=False, and
#: their inactive values; repetition_penalty is reproduced, the others are refused when active
INACTIVE = {"no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
            "min_new_tokens": (None, 0), "sequence_bias": (None,), "forced_bos_token_id": (None,),
            "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
            "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1, 1.0),
            "remove_invalid_values": (None, False), "forced_decoder_ids": (None,)}


def repetition_penalty(directory: Path) -> float:
    """``repetition_penalty`` of ``generation_config.json`` (1.0 when absent); refuses other processors that
    ``generate(do_sample=False)`` would apply, which this metric does not reproduce."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return 1.0
    cfg = _read_json(path)
    active = [k for k, inactive in INACTIVE.items() if cfg.get(k) not in inactive]
    if active:
        raise CheckpointError(f"{path}: {', '.join(active)} set: the official generate() would apply logits processors "
                              "that vqascore does not reproduce (only repetition_penalty is)")
    penalty = cfg.get("repetition_penalty")
    if penalty is None:
        return 1.0
    if not isinstance(penalty, (int, float)) or penalty <= 0:
        raise CheckpointError(f"{path}: repetition_penalty must be a positive number, got {penalty!r}")
    return float(penalty)


class QwenVL:
    """Qwen2-VL / Qwen2.5-VL (transformers 5 classes) scoring ``P(answer token | image, question)``."""

    def __init__(self, directory: Path, config: dict, question: str, answer: str, device: torch.device,
                 dtype: torch.dtype):
        import transformers

        model_type = config.get("model_type")
        if model_type not in MODEL_CLASSES:
            raise CheckpointError(f"{directory / 'config.json'}: model_type {model_type!r} is not Qwen2-VL or Qwen2.5-VL")
        for name in ("preprocessor_config.json", "tokenizer.json"):
            if not (directory / name).is_file():
                raise ModelSourceError(f"{directory}: no {name} (expected the Qwen/{model_type} Instruct repository layout)")
        template = read_chat_template(directory)
        if template is None:
            raise ModelSourceError(f"{directory}: no chat template (chat_template.json, chat_template.jinja or "
                                   "tokenizer_config.json)")
        self.device, self.dtype = device, dtype
        self.settings = QwenVisionSettings(_read_json(directory / "preprocessor_config.json"))
        self.penalty = repetition_penalty(directory)
        self.tokenizer = load_tokenizer(directory / "tokenizer.json")
        self.template = compile_template(template)
        self.question, self.answer = question, answer
        try:
            self.model = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(
                str(directory), dtype=dtype, attn_implementation="sdpa")
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: cannot load the {MODEL_CLASSES[model_type]} weights: {exc}") from None
        self.model.to(device).eval().requires_grad_(False)
        self.image_id = int(self.model.config.image_token_id)
        if self.tokenizer.token_to_id(IMAGE_TOKEN) != self.image_id:
            raise CheckpointError(f"{directory}: config.json's image_token_id {self.image_id} is not the tokenizer's "
                                  f"{IMAGE_TOKEN} ({self.tokenizer.token_to_id(IMAGE_TOKEN)})")
        merge = self.model.config.vision_config.spatial_merge_size
        if merge != self.settings.merge:
            raise CheckpointError(f"{directory}: vision spatial_merge_size {merge} != processor merge_size {self.settings.merge}")
        self.vocab = int(self.model.lm_head.weight.shape[0])
        self._ids: OrderedDict[str, tuple[list[int], int, int]] = OrderedDict()

    # -- inputs ------------------------------------------------------------------------------------
    def preprocess(self, image, name: str) -> torch.Tensor:
        return qwen_pixels(image, self.settings, FIRST_PIXELS, name)

    def preprocess_key(self):
        return ("qwen-vl-utils", FIRST_PIXELS) + self.settings.key()

    def preprocess_tensor(self, pixels: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Differentiable twin of :meth:`preprocess` for RGB ``(B, 3, H, W)`` in [0, 1] (one size per batch)."""
        return qwen_pixels_tensor(pixels, self.settings, FIRST_PIXELS, quantize)

    def render(self, prompt: str) -> str:
        """The official text: the chat template on ``[image, question]`` with the generation prompt."""
        messages = [{"role": "user", "content": [{"type": "image", "image": ""},
                                                 {"type": "text", "text": self.question.format(prompt)}]}]
        return self.template.render(messages=messages, add_generation_prompt=True)

    def prompt_ids(self, prompt: str) -> tuple[list[int], int, int]:
        """``(ids with one image token, index of that token, answer token id)``, cached per prompt."""
        hit = self._ids.get(prompt)
        if hit is not None:
            self._ids.move_to_end(prompt)
            return hit
        ids = self.tokenizer.encode(self.render(prompt), add_special_tokens=True).ids
        image_at = [i for i, t in enumerate(ids) if t == self.image_id]
        if len(image_at) != 1:
            raise PromptError(f"the prompt contains the image token {IMAGE_TOKEN}; the official processor would give it "
                              "another image's features: remove it from the prompt" if image_at else
                              "the chat template did not place the image token (not a Qwen2-VL template?)")
        answer = self.tokenizer.encode(self.answer.format(prompt), add_special_tokens=True).ids
        if not answer:
            raise PromptError(f"the answer template {self.answer!r} gives no token")
        hit = (ids, image_at[0], answer[0])
        self._ids[prompt] = hit
        while len(self._ids) > 4096:
            self._ids.popitem(last=False)
        return hit

    # -- model -------------------------------------------------------------------------------------
    def scores(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """``(B, H/28, W/28, 2, 2, D)`` patches of one image size + prompts -> float32 ``(B,)`` probabilities."""
        b, gh, gw = grid_of(pixels)
        n_image = pixels.shape[1] * pixels.shape[2]
        rows, answers = [], []
        for p in prompts:
            ids, image_at, answer = self.prompt_ids(p)
            rows.append(ids[:image_at] + [self.image_id] * n_image + ids[image_at + 1:])
            answers.append(answer)
        width = max(len(r) for r in rows)
        input_ids = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # the vision tower once per distinct image of the batch (an image scored with several prompts)
        unique, row_of = [], []
        for i in range(b):
            j = next((k for k, u in enumerate(unique) if torch.equal(pixels[u], pixels[i])), None)
            if j is None:
                unique.append(i)
                j = len(unique) - 1
            row_of.append(j)
        lm = self.model.model
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=self.device)
        feats = lm.get_image_features(pixels[unique].reshape(-1, pixels.shape[-1]).to(self.device, self.dtype),
                                      grid[: len(unique)]).pooler_output
        embeds = lm.get_input_embeddings()(input_ids)
        image_mask = (input_ids == self.image_id).unsqueeze(-1).expand_as(embeds)
        image_embeds = torch.cat([feats[j] for j in row_of]).to(embeds.dtype)
        embeds = embeds.masked_scatter(image_mask, image_embeds)
        out = lm(input_ids=input_ids, inputs_embeds=embeds, attention_mask=mask, image_grid_thw=grid,
                 mm_token_type_ids=(input_ids == self.image_id).int(), use_cache=False)
        lengths = mask.sum(1)
        last = out.last_hidden_state[torch.arange(b, device=self.device), lengths - 1]
        logits = self.model.lm_head(last).float()
        if self.penalty != 1.0:  # transformers' RepetitionPenaltyLogitsProcessor over each row's own input ids
            penalised = []
            for i, r in enumerate(rows):
                seen = torch.tensor(sorted(set(r)), device=self.device)
                picked = logits[i, seen]
                picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
                penalised.append(logits[i].scatter(0, seen, picked))
            logits = torch.stack(penalised)
        probs = torch.softmax(logits, dim=-1)
        return probs[torch.arange(b, device=self.device), torch.tensor(answers, device=self.device)]


__all__ = ["ANSWER", "FIRST_PIXELS", "MODEL_CLASSES", "QUESTION", "QwenVL", "repetition_penalty"]
