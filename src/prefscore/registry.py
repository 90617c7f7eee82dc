"""The metric registry: names -> specs (inputs, range, direction, default weights, licence, notes)."""

from __future__ import annotations

import difflib
import importlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UnknownMetricError

INF = math.inf


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is, before any weights are loaded.

    ``output_range`` is the mathematically possible range (``-inf``/``inf`` where unbounded);
    ``typical`` says what values look like in practice. ``entry`` is ``"module:Class"``.
    """

    name: str
    family: str
    summary: str
    inputs: str  # "image" or "image+prompt"
    output_range: tuple[float, float]
    typical: str
    higher_is_better: bool
    default_model: str
    weights_license: str
    strength: str
    caveat: str
    entry: str
    paper: str = ""
    options: dict | None = field(default_factory=dict)  # None: the class validates its own options
    aliases: tuple[str, ...] = ()

    @property
    def prompt_aware(self) -> bool:
        return self.inputs == "image+prompt"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("entry")
        d["output_range"] = [_fmt(x) for x in self.output_range]
        return d


def _fmt(x: float):
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


_SPECS: dict[str, MetricSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: MetricSpec) -> MetricSpec:
    if spec.name in _SPECS:
        raise ValueError(f"metric {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def get_spec(name: str) -> MetricSpec:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _SPECS:
        close = difflib.get_close_matches(key, list(_SPECS) + list(_ALIASES), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownMetricError(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(_SPECS)}.")
    return _SPECS[key]


def column_metric(column: str) -> tuple[str, str | None] | None:
    """``(metric name, output)`` behind a score column, or None when it names no registered metric.

    ``prefscore score`` names a metric's column after the metric (``hpsv2.1``, ``laion-aesthetic-v2.5``)
    or, for several outputs, ``name.output`` (``clip-iqa.quality``). Metric names may hold dots, so the
    whole column is tried first, then the part before its first dot.
    """
    try:
        return get_spec(column).name, None
    except UnknownMetricError:
        pass
    if "." in column:
        base, output = column.split(".", 1)
        try:
            return get_spec(base).name, output
        except UnknownMetricError:
            pass
    return None


def list_metrics() -> list[MetricSpec]:
    """Every registered metric, in registry order (see :class:`MetricSpec` for the fields)."""
    return list(_SPECS.values())


def load(name: str, model: str | Path | None = None, device: str = "cpu", dtype: str = "float32", **options):
    """Load a metric by registry name.

    ``model``: a hub repo id or a local directory holding the same files as the published repo;
    None loads the official default (``spec.default_model``). ``device``: any torch device string.
    ``dtype``: "float32" (default; the parity setting), "float16" or "bfloat16".
    ``options``: metric-specific settings (listed in ``spec.options``).
    """
    if model is None and Path(name).expanduser().is_dir():
        return _load_directory(Path(name).expanduser(), device, dtype, **options)
    spec = get_spec(name)
    if spec.options is not None:
        from .base import check_options  # torch only once a metric is loaded

        check_options(spec.name, options, spec.options)
    module_name, cls_name = spec.entry.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    metric = cls(spec, source=str(model) if model is not None else spec.default_model, device=device, dtype=dtype, **options)
    from .memory import settle_malloc_thresholds

    settle_malloc_thresholds()  # CPU forwards otherwise keep page-faulting their activations (see prefscore.memory)
    return metric


MODEL_CARD_FILE = "prefscore.json"


def _load_directory(root: Path, device: str, dtype: str, **options):
    """``load(<dir>)``: a model directory written by prefscore names its metric in ``prefscore.json``."""
    from .errors import CheckpointError
    from .hub import read_json

    card = root / MODEL_CARD_FILE
    if not card.is_file():
        raise UnknownMetricError(
            f"{root} is a directory without {MODEL_CARD_FILE}; pass a metric name and model=<dir> "
            f"(e.g. load('hpsv2', model='{root}'))"
        )
    meta = read_json(card, "model description")
    if not isinstance(meta.get("metric"), str):
        raise CheckpointError(f"{card}: no \"metric\" name (the metric this directory is a model of)")
    return load(meta["metric"], model=root, device=device, dtype=dtype, **options)


def _builtin() -> None:
    register(MetricSpec(
        name="laion-aesthetic", family="aesthetic", aliases=("aesthetic", "laion-aesthetic-v2", "improved-aesthetic"),
        summary="LAION improved aesthetic predictor (v2 MLP head on L2-normalised CLIP ViT-L/14 image features)",
        inputs="image", output_range=(-INF, INF), typical="about 1-10 (mean human rating); 6.5+ is 'high aesthetic'",
        higher_is_better=True,
        default_model="openai/clip-vit-large-patch14 + camenduru/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE.pth)",
        weights_license="CLIP: MIT; head: Apache-2.0",
        strength="cheap, prompt-free look-good filter used to build LAION-Aesthetics",
        caveat="ignores the prompt: a beautiful image of the wrong thing scores high",
        entry="prefscore.metrics.aesthetic:LaionAesthetic",
        paper="christophschuhmann/improved-aesthetic-predictor",
        options={"head": "file name of the head in the model directory", "backbone": "CLIP source (dir or hub id) if not in the model directory"},
    ))
    register(MetricSpec(
        name="laion-aesthetic-v1", family="aesthetic", aliases=("aesthetic-v1",),
        summary="LAION aesthetic predictor v1 (linear head on L2-normalised CLIP ViT-L/14 image features)",
        inputs="image", output_range=(-INF, INF), typical="about 1-10 (SAC ratings)", higher_is_better=True,
        default_model="openai/clip-vit-large-patch14 + LAION-AI/aesthetic-predictor (sa_0_4_vit_l_14_linear.pth)",
        weights_license="CLIP: MIT; head: MIT",
        strength="the original LAION-Aesthetics V1 filter; a single linear map, very fast",
        caveat="ignores the prompt; weaker than v2 on AVA",
        entry="prefscore.metrics.aesthetic:LaionAestheticV1",
        paper="LAION-AI/aesthetic-predictor",
        options={"head": "file name of the head in the model directory", "backbone": "CLIP source (dir or hub id) if not in the model directory"},
    ))
    register(MetricSpec(
        name="laion-aesthetic-v2.5", family="aesthetic", aliases=("aesthetic-v2.5", "aesthetic-predictor-v2.5", "siglip-aesthetic"),
        summary="Aesthetic Predictor V2.5 (MLP head on L2-normalised SigLIP so400m-patch14-384 attention-pooled features)",
        inputs="image", output_range=(-INF, INF), typical="about 1-10; 5.5+ is 'great' (calibrated lower than LAION v2)",
        higher_is_better=True,
        default_model="google/siglip-so400m-patch14-384 + discus0434/aesthetic-predictor-v2-5 (models/aesthetic_predictor_v2_5.pth)",
        weights_license="SigLIP: Apache-2.0; head (and the official code): AGPL-3.0",
        strength="prompt-free aesthetics over a wider range of domains than LAION v2 (illustrations, anime, photos)",
        caveat="ignores the prompt; AGPL-3.0 head weights; 400M-parameter backbone at 384 px (slower than ViT-L/14 at 224)",
        entry="prefscore.metrics.aesthetic:AestheticV25",
        paper="discus0434/aesthetic-predictor-v2-5",
        options={"head": "file name of the head in the model directory (default aesthetic_predictor_v2_5.pth)",
                 "backbone": "SigLIP source (dir or hub id) if not in the model directory"},
    ))
    register(MetricSpec(
        name="clip-iqa", family="clip-iqa", aliases=("clipiqa",),
        summary="CLIP-IQA: softmax over antonym prompt pairs of 100*cos, probability of the positive prompt",
        inputs="image", output_range=(0.0, 1.0), typical="0-1 per axis", higher_is_better=True,
        default_model="openai/clip-vit-base-patch16",
        weights_license="CLIP: MIT",
        strength="zero-shot, interpretable axes (quality, sharpness, noise, ...) and custom antonym pairs",
        caveat="depends on prompt design; the sign of some axes is arbitrary (e.g. 'scary', 'new')",
        entry="prefscore.metrics.clipiqa:ClipIQA",
        paper="Wang et al. 2023, Exploring CLIP for Assessing the Look and Feel of Images",
        options={"prompts": "axes: built-in names and/or (positive, negative) sentence pairs; default ('quality',)",
                 "backbone": "'hf' (any HF CLIP, the default) or 'rn50' (original CLIP-IQA: OpenAI RN50, no positional embedding, full resolution)",
                 "logit_scale": "multiplier of the cosine (default 100, as torchmetrics and the paper)"},
    ))
    register(MetricSpec(
        name="hpsv2", family="hps", aliases=("hps", "hps-v2", "hpsv2.0"),
        summary="Human Preference Score v2: cosine of open_clip ViT-H-14 image and prompt features",
        inputs="image+prompt", output_range=(-1.0, 1.0), typical="about 0.2-0.35 (tables print 100x)",
        higher_is_better=True, default_model="xswu/HPSv2 (HPS_v2_compressed.pt)",
        weights_license="Apache-2.0",
        strength="strong agreement with HPD v2 human rankings",
        caveat="dataset/style bias of HPD v2; compare images of the same prompt only; v2 and v2.1 scales differ",
        entry="prefscore.metrics.hps:HPSv2", paper="Wu et al. 2023, Human Preference Score v2",
        options={"checkpoint": "checkpoint file name in the model directory", "tokenizer": "source of the CLIP BPE vocabulary"},
    ))
    register(MetricSpec(
        name="hpsv2.1", family="hps", aliases=("hps-v2.1", "hpsv21"),
        summary="Human Preference Score v2.1 (retrained HPS v2 on higher-quality data)",
        inputs="image+prompt", output_range=(-1.0, 1.0), typical="about 0.2-0.35 (tables print 100x)",
        higher_is_better=True, default_model="xswu/HPSv2 (HPS_v2.1_compressed.pt)",
        weights_license="Apache-2.0",
        strength="best HPD v2 accuracy of the CLIP-based scorers",
        caveat="dataset/style bias of HPD v2; compare images of the same prompt only; not comparable with v2.0",
        entry="prefscore.metrics.hps:HPSv21", paper="Wu et al. 2023, Human Preference Score v2",
        options={"checkpoint": "checkpoint file name in the model directory", "tokenizer": "source of the CLIP BPE vocabulary"},
    ))
    register(MetricSpec(
        name="pickscore", family="pickscore", aliases=("pick-score", "pickscore-v1"),
        summary="PickScore: exp(logit_scale) * cos of fine-tuned CLIP-H features (Pick-a-Pic preferences)",
        inputs="image+prompt", output_range=(-100.0, 100.0), typical="about 18-23; only comparable within a prompt",
        higher_is_better=True,
        default_model="yuvalkirstain/PickScore_v1 + processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        weights_license="MIT",
        strength="trained on real users' choices; softmax over candidates is a calibrated preference probability",
        caveat="dataset/style bias of Pick-a-Pic users; raw scores are not comparable across prompts",
        entry="prefscore.metrics.pickscore:PickScore", paper="Kirstain et al. 2023, Pick-a-Pic",
        options={"processor": "source of the tokenizer and preprocessor files if not in the model directory"},
    ))
    register(MetricSpec(
        name="clipscore", family="clipscore", aliases=("clip-score", "clip"),
        summary="CLIPScore: w * max(cos(image, prompt), 0), the prompt-alignment baseline",
        inputs="image+prompt", output_range=(0.0, 2.5), typical="about 0.5-1.0 with w=2.5 (x40 for the 100-scale)",
        higher_is_better=True, default_model="openai/clip-vit-large-patch14",
        weights_license="MIT",
        strength="reference-free prompt alignment; pairs well with an aesthetic score",
        caveat="says nothing about quality; saturates, weak on counting and composition",
        entry="prefscore.metrics.clipscore:ClipScore", paper="Hessel et al. 2021, CLIPScore",
        options={"w": "weight w (2.5 as published; 100 gives torchmetrics' scale)",
                 "prefix": "text put before each prompt (Hessel et al. use 'A photo depicts')"},
    ))
    register(MetricSpec(
        name="mps", family="mps", aliases=("mps-overall", "multi-dimensional-preference-score"),
        summary="MPS (overall): CLIP-H with condition-aware cross-attention; exp(logit_scale) * cos(prompt, image)",
        inputs="image+prompt", output_range=(-INF, INF),
        typical="within +-exp(logit_scale) of the checkpoint; only comparable within a prompt",
        higher_is_better=True,
        default_model="MPS_overall_checkpoint.pth (Kwai-Kolors/MPS, Google Drive only: pass its directory) "
                      "+ processor laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        weights_license="MIT (the Kwai-Kolors/MPS repository licence; the checkpoint states no other)",
        strength="best published agreement on ImageReward, HPD v2 and MHP of the CLIP-based scorers (README table)",
        caveat="no hub download; only the overall model is released; compare images of the same prompt only",
        entry="prefscore.metrics.mps:MPS", paper="Zhang et al. 2024, Learning Multi-dimensional Human Preference for Text-to-Image Generation",
        options={"processor": "source of the tokenizer and preprocessor files if not in the model directory",
                 "condition": "condition text of the cross-attention (default: the README's overall condition)",
                 "checkpoint": "checkpoint file name in the model directory"},
    ))

    register(MetricSpec(
        name="imagereward", family="imagereward", aliases=("image-reward", "ir"),
        summary="ImageReward: BLIP (ViT-L + BERT with cross-attention) reward model trained on expert rankings",
        inputs="image+prompt", output_range=(-INF, INF), typical="about N(0, 1) by construction (standardised reward)",
        higher_is_better=True, default_model="THUDM/ImageReward (ImageReward.pt + med_config.json)",
        weights_license="Apache-2.0",
        strength="the reward most used for fine-tuning and reward-guided sampling; good on prompt following",
        caveat="prone to reward hacking when optimised directly; bias of its annotators",
        entry="prefscore.metrics.imagereward:ImageReward", paper="Xu et al. 2023, ImageReward",
        options=None,
    ))
    register(MetricSpec(
        name="hpsv3", family="hpsv3", aliases=("hps-v3", "hpsv3-7b"),
        summary="HPSv3: Qwen2-VL-7B-Instruct reward model; mu (the score) and sigma of an uncertainty-aware head",
        inputs="image+prompt", output_range=(-INF, INF),
        typical="mu unbounded: generator means from about -0.2 (SD2) to 10.6 (Kolors) in the HPSv3 README; sigma > 0 (second output)",
        higher_is_better=True,
        default_model="MizzenAI/HPSv3 (HPSv3.safetensors) + config/processor/tokenizer of Qwen/Qwen2-VL-7B-Instruct",
        weights_license="MIT (the HPSv3 repository's LICENSE); base Qwen2-VL-7B-Instruct: Apache-2.0",
        strength="VLM reward trained on HPD v3 (1.08M images, 1.17M pairs, incl. real photos and many generators); scores with an uncertainty",
        caveat="a 7B model: slow and memory-hungry (about 16 GB in bf16, 32 GB in float32); HPD v3 rater bias",
        entry="prefscore.metrics.hpsv3:HPSv3", paper="Ma, Shui et al. 2025, HPSv3: Towards Wide-Spectrum Human Preference Score (ICCV)",
        options={"base": "source of the Qwen2-VL config, preprocessor, tokenizer and chat template when the model directory lacks them (default Qwen/Qwen2-VL-7B-Instruct)",
                 "checkpoint": "weights file name in the model directory (default HPSv3.safetensors)"},
    ))
    register(MetricSpec(
        name="q-align", family="q-align", aliases=("qalign", "one-align", "onealign"),
        summary="Q-Align: an LMM's probabilities of five level words (excellent..bad) turned into a score (official mPLUG-Owl2 checkpoints run natively)",
        inputs="image", output_range=(1.0, 5.0), typical="1-5 (or 0-1 with the scorer.py weights)",
        higher_is_better=True, default_model="q-future/one-align",
        weights_license="non-commercial (Q-Align / OneAlign model licence); LLaMA-2 licence applies",
        strength="state-of-the-art agreement with MOS on quality and aesthetics; tasks for images and video",
        caveat="8.2B parameters: 16.4 GB in float16/bfloat16, 32.8 GB in float32 (the default); non-commercial weights",
        entry="prefscore.metrics.qalign:QAlign", paper="Wu et al. 2023, Q-Align",
        options=None,
    ))
    register(MetricSpec(
        name="vqascore", family="vqascore", aliases=("vqa-score", "clip-flant5", "t2v-vqascore"),
        summary='VQAScore: a VLM\'s probability of answering "Yes" to "Does this figure show \\"{prompt}\\"? Please answer yes or no." (CLIP-FlanT5) or "Does this image show \\"{prompt}\\"?" (Qwen2-VL / Qwen2.5-VL; LLaVA-OneVision adds " Answer the question with Yes or No")',
        inputs="image+prompt", output_range=(0.0, 1.0), typical="0-1; about 0.3-0.9 on real generations (CLIP-FlanT5-XXL)",
        higher_is_better=True, default_model="zhiqiulin/clip-flant5-xxl (+ openai/clip-vit-large-patch14-336 processor); or model=qwen2-vl-2b/7b/72b, qwen2.5-vl-3b/7b/32b/72b (Qwen/Qwen2(.5)-VL-*-Instruct), llava-onevision-qwen2-7b-ov/-si (lmms-lab)",
        weights_license="Apache-2.0 (CLIP-FlanT5; FlanT5: Apache-2.0, CLIP: MIT); Qwen2(.5)-VL: Apache-2.0 for most sizes, Qwen licences for Qwen2.5-VL-3B and the 72B models (see each model card); LLaVA-OneVision (lmms-lab): Apache-2.0",
        strength="best agreement with humans on compositional prompt alignment (GenAI-Bench, Winoground, TIFA)",
        caveat="alignment only, not quality; large models (CLIP-FlanT5-XXL 11B, ~22 GB in bfloat16; Qwen 2B-72B; LLaVA-OneVision 8B)",
        entry="prefscore.metrics.vqascore:VQAScore", paper="Lin et al. 2024, Evaluating Text-to-Visual Generation with Image-to-Text Generation (ECCV)",
        options=None,
    ))
    register(MetricSpec(
        name="custom", family="custom", aliases=("trained",),
        summary="A preference or rating model trained with `prefscore train` (head on frozen CLIP features, or a fine-tuned CLIP)",
        inputs="image+prompt", output_range=(-INF, INF), typical="see the model card in the model directory",
        higher_is_better=True, default_model="(none: pass the trained model directory)",
        weights_license="yours",
        strength="your annotators, your domain",
        caveat="only as good as your judgements; check agreement on held-out data (the model card reports it)",
        entry="prefscore.training.metric:CustomMetric",
        options=None,
    ))
    register(MetricSpec(
        name="composite", family="composite",
        summary="A weighted sum of normalised metrics, from a saved calibration file (`prefscore calibrate`)",
        inputs="image+prompt", output_range=(-INF, INF), typical="depends on the normaliser (z-score: about -3..3)",
        higher_is_better=True, default_model="(none: pass the calibration file)",
        weights_license="those of its component metrics",
        strength="one number to track, comparable across runs (fixed calibration)",
        caveat="inherits every component's bias; weights learned from one population of raters",
        entry="prefscore.evaluation.composite:CompositeMetric",
        options=None,
    ))


_builtin()
