"""Fine-tuning a CLIP on preference pairs, as PickScore and HPS v2 do.

The score is ``exp(logit_scale) * cos(image, prompt)``; a pair's loss is the Bradley-Terry /
2-way softmax cross-entropy of the two scores with PickScore's tie target (0.5, 0.5) + log 0.5.
Defaults follow PickScore's recipe (AdamW lr 1e-6, 500 warm-up steps then constant, gradient
clipping at 1.0, full fine-tune, learnable ``logit_scale`` clamped to [0, ln 100] as HPS v2 does);
HPS v2's partial fine-tune is ``vision_layers=20, text_layers=11`` and lr 3.3e-6, weight decay 0.35.

Checkpoints (``<out>/checkpoints/step-N.pt``: trainable tensors, optimizer, scheduler, scaler, RNG,
step, history and early-stopping state) are written every ``checkpoint_every`` optimizer steps;
a run with ``resume=True`` continues from the latest one and gives the same result as an
uninterrupted run (the data order is a function of the seed and the step).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__, hub, preprocess
from ..backbones.clip import OPENAI_ARCH, load_weights
from ..backbones.loading import HF_CLIP_FILES, hf_text_features, load_clip_processor, load_clip_tower
from ..data import Judgements, Pair
from ..errors import ModelSourceError
from ..images import load_image
from .features import OPENAI_FILES, model_fingerprint
from .losses import bradley_terry_loss
from .modeldir import BACKBONE_DIR, write_model_dir
from .report import (
    PairOutcome,
    bootstrap_accuracy_ci,
    choose_tie_threshold,
    pairwise_accuracy,
    preference_probability,
    tie_aware_accuracy,
    tie_chance,
)

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class FinetuneConfig:
    """Settings of the full path (``prefscore train --finetune``).

    lr / weight_decay: AdamW. warmup_steps: linear warm-up from 0; schedule: then ``"constant"``
    (PickScore) or ``"cosine"`` decay to 0 at ``max_steps``. batch_size: pairs per micro-batch;
    grad_accum: micro-batches per optimizer step. max_grad_norm: gradient clipping (0 = off).
    precision: ``"fp32"``, ``"bf16"`` (autocast, CPU or GPU) or ``"fp16"`` (autocast + loss scaling, GPU only).
    vision_layers / text_layers: how many of the last transformer layers of each tower train (with
    the tower's final norm and projection); None = the whole tower, 0 = frozen tower.
    logit_scale: ``"learn"`` (clamped to [0, ln 100] after each step) or ``"fixed"``.
    checkpoint_every / eval_every: in optimizer steps; keep_checkpoints: how many to keep.
    resume: continue from the latest checkpoint in ``<out>/checkpoints`` if there is one.
    stop_after: end this run after that many optimizer steps (for time-limited jobs; resume later).
    """

    lr: float = 1e-6
    weight_decay: float = 0.0
    warmup_steps: int = 500
    schedule: str = "constant"
    max_steps: int = 4000
    batch_size: int = 16
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    precision: str = "fp32"
    vision_layers: int | None = None
    text_layers: int | None = None
    logit_scale: str = "learn"
    checkpoint_every: int = 500
    eval_every: int = 250
    keep_checkpoints: int = 2
    resume: bool = True
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")
        if self.logit_scale not in ("learn", "fixed"):
            raise ValueError(f"logit_scale must be 'learn' or 'fixed', not {self.logit_scale!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "eval_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    def as_dict(self) -> dict:
        return asdict(self)


def set_trainable(model, cfg: FinetuneConfig) -> list[str]:
    """Freeze/unfreeze ``CLIPModel`` parameters per ``cfg``; returns the trainable names."""
    n_vision = model.config.vision_config.num_hidden_layers
    n_text = model.config.text_config.num_hidden_layers

    def unlocked(name: str, tower: str, n_layers: int, keep: int | None, top: tuple[str, ...]) -> bool:
        if keep is None:
            return True
        m = re.match(rf"{tower}\.encoder\.layers\.(\d+)\.", name)
        if m:
            return int(m.group(1)) >= n_layers - keep
        return keep > 0 and name.startswith(top)

    names = []
    for name, p in model.named_parameters():
        if name == "logit_scale":
            p.requires_grad_(cfg.logit_scale == "learn")
        elif name.startswith(("vision_model.", "visual_projection")):
            p.requires_grad_(unlocked(name, "vision_model", n_vision, cfg.vision_layers,
                                      ("vision_model.post_layernorm", "visual_projection")))
        elif name.startswith(("text_model.", "text_projection")):
            p.requires_grad_(unlocked(name, "text_model", n_text, cfg.text_layers,
                                      ("text_model.final_layer_norm", "text_projection")))
        if p.requires_grad:
            names.append(name)
    return names


def _lr_lambda(cfg: FinetuneConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            span = max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0
    return f


class _Model:
    """The CLIP being trained with its tokenizer and image pipeline."""

    def __init__(self, source: str, processor: str | None, device: torch.device):
        self.source = source
        root = Path(source).expanduser() if hub.is_local(source) else hub.local_dir(source, HF_CLIP_FILES, what="CLIP model")
        self.fingerprint = model_fingerprint(root)
        self.tower = load_clip_tower(str(root), OPENAI_ARCH, torch.float32, OPENAI_FILES, what="CLIP model").to(device)
        proc = Path(processor).expanduser() if processor and hub.is_local(processor) else (
            hub.local_dir(processor, ["*.json", "*.txt"], what="CLIP processor") if processor else root)
        if not (proc / "preprocessor_config.json").is_file():
            raise ModelSourceError(f"{proc}: no preprocessor_config.json; fine-tuning needs the CLIP processor files "
                                   f"(pass processor=<folder or hub id>)")
        self.processor_root = proc
        self.tokenizer, self.processor = load_clip_processor(proc, what="CLIP processor")
        self.device = device

    @property
    def model(self):
        return self.tower.model

    def pixels(self, paths: list[str]) -> torch.Tensor:
        return torch.stack([preprocess.hf_clip(load_image(p, p), self.processor, name=p) for p in paths]).to(self.device)

    def scores(self, paths: list[str], prompts: list[str]) -> torch.Tensor:
        img = self.tower.image_features(self.pixels(paths)).float()
        txt = hf_text_features(self.tower, self.tokenizer, prompts, self.device).float()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.float().exp() * (img * txt).sum(-1)

    def save(self, target: Path) -> None:
        from transformers.utils import logging as hf_logging

        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.model.save_pretrained(str(tmp))
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(str(tmp))
        shutil.copy(self.processor_root / "preprocessor_config.json", tmp / "preprocessor_config.json")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)


def _batch_of(pairs: list[Pair], micro: int, batch_size: int, seed: int) -> list[Pair]:
    """Micro-batch number ``micro``: epoch ``micro // n_batches`` in the order drawn from ``(seed, epoch)``."""
    n_batches = math.ceil(len(pairs) / batch_size)
    epoch, pos = divmod(micro, n_batches)
    order = np.random.default_rng([seed, epoch]).permutation(len(pairs))
    return [pairs[i] for i in order[pos * batch_size:(pos + 1) * batch_size]]


def _pair_loss(m: _Model, pairs: list[Pair], margin: float, temperature: float) -> torch.Tensor:
    paths = [p.image_a for p in pairs] + [p.image_b for p in pairs]
    prompts = [p.prompt for p in pairs] * 2
    s = m.scores(paths, prompts)
    n = len(pairs)
    target = torch.tensor([p.target for p in pairs], device=s.device)
    marg = torch.tensor([p.margin + margin for p in pairs], device=s.device)
    return bradley_terry_loss(s[:n], s[n:], target, temperature, marg)


@torch.no_grad()
def _outcome(m: _Model, pairs: list[Pair], groups: list[str], batch: int) -> PairOutcome:
    slots = list(dict.fromkeys([(p.image_a, p.prompt) for p in pairs] + [(p.image_b, p.prompt) for p in pairs]))
    values: dict[tuple[str, str], float] = {}
    for s in range(0, len(slots), batch):
        chunk = slots[s:s + batch]
        for key, v in zip(chunk, m.scores([c[0] for c in chunk], [c[1] for c in chunk]).tolist()):
            values[key] = v
    return PairOutcome(np.array([values[(p.image_a, p.prompt)] for p in pairs]),
                       np.array([values[(p.image_b, p.prompt)] for p in pairs]),
                       np.array([p.target for p in pairs]), np.array(groups, dtype=object))


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-*.pt"))
    return found[-1] if found else None


def finetune(train_j: Judgements, val_j: Judgements, desc: dict, out: Path, config, progress: bool = False):
    """Fine-tune ``config.backbone`` on the pairs of ``train_j`` (see :class:`FinetuneConfig`)."""
    from .trainer import TrainResult, _Bar, _fmt_log

    cfg: FinetuneConfig = config.finetune
    if config.objective != "pairwise":
        raise ValueError("fine-tuning trains on pairs with the Bradley-Terry loss: use objective 'pairwise' "
                         "(rankings are expanded to pairs); heads support 'choice' and 'rating'")
    if config.backbone == "stats":
        raise ValueError("the 'stats' backbone has no weights to fine-tune: give a CLIP source as backbone")
    device = torch.device(config.device)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
    t0 = time.time()
    torch.manual_seed(config.seed)
    m = _Model(config.backbone, config.processor, device)
    trainable = set_trainable(m.model, cfg)
    if not trainable:
        raise ValueError("nothing to train: every tower is frozen and logit_scale is fixed")
    params = [p for p in m.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)

    def groups_of(j: Judgements) -> tuple[list[Pair], list[str]]:
        pairs, groups = [], []
        for rec, g in zip(j.records, j.groups):
            for p in (rec.pairs() if hasattr(rec, "pairs") else [rec]):
                pairs.append(p)
                groups.append(g)
        return pairs, groups

    train_pairs, train_groups = groups_of(train_j)
    val_pairs, val_groups = groups_of(val_j) if len(val_j) else ([], [])
    ckpt_dir, best_dir = out / "checkpoints", out / "best"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    step, history, best, bad, best_step = 0, [], math.inf, 0, 0
    latest = _latest_checkpoint(ckpt_dir) if cfg.resume else None
    if latest is not None:
        state = load_weights(latest, map_location=device)
        unknown = set(state["model"]) - set(trainable)
        if unknown:
            raise ValueError(f"{latest}: checkpoint trains other tensors than this configuration ({sorted(unknown)[:3]}...)")
        m.model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        step, history, best, bad, best_step = state["step"], state["history"], state["best"], state["bad"], state["best_step"]

    def save_checkpoint() -> None:
        state = {"model": {k: v.detach().cpu() for k, v in m.model.state_dict().items() if k in trainable},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                 "rng": torch.get_rng_state(), "step": step, "history": history, "best": best, "bad": bad,
                 "best_step": best_step, "config": config.as_dict()}
        target = ckpt_dir / f"step-{step:07d}.pt"
        torch.save(state, str(target) + ".tmp")
        os.replace(str(target) + ".tmp", target)
        for old in sorted(ckpt_dir.glob("step-*.pt"))[:-cfg.keep_checkpoints]:
            old.unlink()

    def evaluate() -> dict:
        m.model.eval()
        o = _outcome(m, val_pairs, val_groups, cfg.batch_size * 2)
        p = torch.from_numpy(preference_probability(o, config.temperature))
        t = torch.from_numpy(o.target)
        loss = -(t * p.clamp_min(1e-12).log() + (1 - t) * (1 - p).clamp_min(1e-12).log()) + torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t)
        return {"val_loss": float(loss.mean()), "val_accuracy": pairwise_accuracy(o)[0]}

    stopped_early = False
    bar = _Bar(progress, cfg.max_steps, "fine-tuning CLIP")
    bar.update(f"resumed at step {step}" if step else "", advance=step)
    run_steps = 0
    try:
        while step < cfg.max_steps and (cfg.stop_after is None or run_steps < cfg.stop_after):
            m.model.train()
            total = 0.0
            for k in range(cfg.grad_accum):
                batch = _batch_of(train_pairs, step * cfg.grad_accum + k, cfg.batch_size, config.seed)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = _pair_loss(m, batch, config.margin, config.temperature) / cfg.grad_accum
                scaler.scale(loss).backward()
                total += float(loss.detach())
            if cfg.max_grad_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                m.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            run_steps += 1
            log = {"step": step, "train_loss": total, "lr": sched.get_last_lr()[0],
                   "logit_scale": float(m.model.logit_scale.detach())}
            if val_pairs and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                log.update(evaluate())
                if log["val_loss"] < best - 1e-6:
                    best, bad, best_step = log["val_loss"], 0, step
                    m.save(best_dir)
                else:
                    bad += 1
            history.append(log)
            bar.update(_fmt_log(log))
            stopped_early = bool(val_pairs) and bad >= config.patience
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or stopped_early:
                save_checkpoint()
            if stopped_early:
                break
    finally:
        bar.close()
    if step < cfg.max_steps and not stopped_early:
        return None  # interrupted on purpose (stop_after): resume later
    final = out / BACKBONE_DIR
    if best_dir.is_dir():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(best_dir, final)
        final_state = load_clip_tower(str(final), OPENAI_ARCH, torch.float32, what="best checkpoint").model.state_dict()
        m.model.load_state_dict(final_state)
    else:
        m.save(final)
        best_step = step
    m.model.eval()

    rng = np.random.default_rng(config.seed)
    sample = rng.choice(len(train_pairs), size=min(2000, len(train_pairs)), replace=False)
    tr_o = _outcome(m, [train_pairs[i] for i in sample], [train_groups[i] for i in sample], cfg.batch_size * 2)
    tie_t = choose_tie_threshold(tr_o, config.temperature)
    metrics: dict = {}
    val_scores = []
    if val_pairs:
        o = _outcome(m, val_pairs, val_groups, cfg.batch_size * 2)
        acc, n = pairwise_accuracy(o)
        lo, hi, how = bootstrap_accuracy_ci(o, config.bootstrap, config.seed)
        metrics.update(pairwise_accuracy=acc, strict_pairs=n, pairwise_accuracy_ci=[lo, hi],
                       pairwise_accuracy_ci_resampled=how, val_ties=int((o.target == 0.5).sum()))
        if metrics["val_ties"]:
            metrics["tie_aware_accuracy"] = tie_aware_accuracy(o, config.temperature, tie_t)
            metrics["tie_chance"] = tie_chance(o, tie_t)
        val_scores = [(p.image_a, p.prompt, float(a)) for p, a in zip(val_pairs, o.score_a)]
    meta = {
        "kind": "finetune",
        "objective": config.objective,
        "prompt_aware": True,
        "features": "clip",
        "backbone": {"type": "clip", "source": config.backbone, "fingerprint": m.fingerprint, "fine_tuned": True,
                     "trainable_tensors": len(trainable)},
        "head": None,
        "temperature": config.temperature,
        "tie_threshold": tie_t,
        "data": desc,
        "metrics": metrics,
        "config": config.as_dict(),
        "stopped": f"step {step}" + (" (early stopping)" if stopped_early else ""),
        "best": f"step {best_step}",
        "train_seconds": round(time.time() - t0, 2),
        "prefscore_version": __version__,
    }
    write_model_dir(out, meta, history)
    return TrainResult(out, metrics, history, meta, val_scores)
