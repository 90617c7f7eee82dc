"""Reward fine-tuning of a diffusion model's UNet through LoRA adapters: ReFL or DRaFT-K.

>>> from prefscore.generation import FinetuneConfig, RewardFinetuner, load_reward
>>> reward = load_reward("imagereward")                              # any differentiable metric / composite
>>> tuner = RewardFinetuner(pipe, reward, prompts, FinetuneConfig(method="refl", steps=100), "runs/refl",
...                         held_out=[load_reward("laion-aesthetic")], pretrain_data=pairs)
>>> result = tuner.train(progress=True)                           # resumes from runs/refl when it holds a checkpoint

Each optimizer step averages ``grad_accum`` batches of ``batch_size`` prompts drawn (seeded) from
``prompts``. The loss is the method's reward loss plus ``pretrain_weight`` times the denoising MSE
on ``pretrain_data`` (image, caption) pairs - the regularising pre-training loss of ReFL.

Every ``eval_every`` steps a fixed set of images (the eval prompts x ``eval_images`` fixed seeds) is
generated and scored with the optimised reward and every held-out reward; when the optimised reward
has risen since step 0 while a held-out one has fallen (bootstrap intervals,
:func:`prefscore.evaluation.warnings.reward_hacking`), a :class:`RewardHackingWarning` is issued and
recorded. Checkpoints (adapter, optimizer, random states, history) go to
``out_dir/checkpoints/step-N`` and ``train`` resumes from the latest one; the final adapter is also
exported in diffusers' LoRA format to ``out_dir/lora``.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbones.clip import load_weights
from .diffusion import DiffusionParts, make_scheduler, to_pil
from .draft import draft_loss
from .lora import LoraSettings, add_lora, export_lora, load_lora, save_lora
from .refl import refl_loss
from .rewards import as_reward

METHODS = ("refl", "draft")
STATE_FILE = "trainer_state.pt"


class RewardHackingWarning(UserWarning):
    """The optimised reward rose while a held-out metric fell: the gain may be reward hacking."""


@dataclass
class FinetuneConfig:
    """Settings of a reward fine-tuning run (defaults: ImageReward's ReFL script, scaled to one GPU).

    ``method``: ``"refl"`` or ``"draft"``. ``num_inference_steps``: denoising steps of the training
    chain (40 in ReFL). ``refl_steps``: inclusive range of the step index that gets the gradient
    (30..39 in ReFL). ``draft_k``: steps with gradients at the end of the chain (DRaFT-K).
    ``reward_target``/``grad_scale``: ReFL's ``relu(target - reward) * grad_scale`` (DRaFT uses
    ``-reward * grad_scale``). ``pretrain_weight``: weight of the denoising MSE on ``pretrain_data``
    (0 or no data: off). ``scheduler``: the training chain's sampler, ``"ddpm"`` (ReFL's) or
    ``"ddim"``; None picks ddpm for ReFL and ddim for DRaFT. ``height``/``width``: pixels (None: the
    UNet's native size). ``eval_every``: steps between held-out evaluations (0: only at the start
    and end); ``eval_images``: seeds per eval prompt. ``checkpoint_every``: steps between
    checkpoints (the last step is always saved). ``hacking_tolerance_sd``: how far (in standard
    deviations of the step-0 scores) a held-out metric must fall before it is reported.
    """

    method: str = "refl"
    steps: int = 100
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_inference_steps: int = 40
    refl_steps: tuple[int, int] = (30, 39)
    draft_k: int = 1
    guidance_scale: float = 7.5
    reward_target: float = 2.0
    grad_scale: float = 1e-3
    pretrain_weight: float = 1.0
    scheduler: str | None = None
    height: int | None = None
    width: int | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval_every: int = 10
    eval_images: int = 2
    checkpoint_every: int = 50
    hacking_tolerance_sd: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be at least 1")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**{k: tuple(v) if k == "targets" else v for k, v in self.lora.items()})
        self.refl_steps = tuple(int(v) for v in self.refl_steps)

    @property
    def sampler(self) -> str:
        return self.scheduler or ("ddpm" if self.method == "refl" else "ddim")


class PretrainData:
    """(image, caption) pairs for the pre-training loss: images (paths or PIL) are converted to RGB,
    resized (short side) and centre-cropped to ``height x width``, scaled to [-1, 1]."""

    def __init__(self, pairs: Sequence[tuple[object, str]], height: int, width: int):
        from PIL import Image

        if not pairs:
            raise ValueError("pre-training data is empty")
        self.captions = [str(c) for _, c in pairs]
        tensors = []
        for item, _ in pairs:
            img = item if isinstance(item, Image.Image) else Image.open(item)
            img = img.convert("RGB")
            scale = max(width / img.width, height / img.height)
            img = img.resize((max(width, round(img.width * scale)), max(height, round(img.height * scale))), Image.BICUBIC)
            left, top = (img.width - width) // 2, (img.height - height) // 2
            img = img.crop((left, top, left + width, top + height))
            arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
            tensors.append(arr)
        self.images = torch.stack(tensors)

    @classmethod
    def from_jsonl(cls, path: str | Path, height: int, width: int) -> "PretrainData":
        """Rows ``{"image": path, "prompt": caption}`` (image paths relative to the file's folder)."""
        path = Path(path)
        pairs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "image" not in row or "prompt" not in row:
                raise ValueError(f"{path}:{n}: a pre-training row needs \"image\" and \"prompt\"")
            image = Path(row["image"])
            pairs.append((image if image.is_absolute() else path.parent / image, row["prompt"]))
        return cls(pairs, height, width)

    def __len__(self) -> int:
        return len(self.captions)


def pretrain_loss(parts: DiffusionParts, data: PretrainData, rng: random.Random, generator: torch.Generator,
                  batch_size: int, train_scheduler) -> torch.Tensor:
    """Denoising MSE (the model's pre-training objective) on a random batch of ``data``."""
    idx = [rng.randrange(len(data)) for _ in range(batch_size)]
    pixels = data.images[idx].to(parts.device, parts.vae.dtype)
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.sample(generator=generator) * parts.vae.config.scaling_factor
        embeds = parts.pipeline.encode_prompt([data.captions[i] for i in idx], parts.device, 1, False)[0]
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    t = torch.randint(0, train_scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(parts.device)
    noisy = train_scheduler.add_noise(latents, noise, t)
    pred = parts.unet(noisy, t, encoder_hidden_states=embeds).sample
    kind = train_scheduler.config.prediction_type
    target = noise if kind == "epsilon" else train_scheduler.get_velocity(latents, noise, t)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


@dataclass
class FinetuneResult:
    """What a run produced: the last step, the training log, the evaluations and the warnings."""

    step: int
    history: list[dict]
    evaluations: list[dict]
    findings: list[dict]
    out_dir: Path
    lora_dir: Path


class RewardFinetuner:
    """ReFL / DRaFT-K on LoRA adapters of ``pipeline.unet`` (see the module docstring).

    ``reward``: what is optimised (a :class:`~prefscore.generation.rewards.Reward`, a prefscore
    metric or composite, or a differentiable callable). ``held_out``: rewards that are only
    tracked. ``eval_prompts``: default the first four training prompts. ``pretrain_data``: a
    :class:`PretrainData`, a JSONL path, or (image, caption) pairs.
    """

    def __init__(self, pipeline, reward, prompts: Sequence[str], config: FinetuneConfig, out_dir: str | Path,
                 held_out: Sequence = (), eval_prompts: Sequence[str] | None = None, pretrain_data=None):
        if not prompts:
            raise ValueError("reward fine-tuning needs at least one training prompt")
        self.config = config
        self.pipeline = pipeline
        self.reward = as_reward(reward)
        self.held_out = [as_reward(r) for r in held_out]
        names = [self.reward.name] + [r.name for r in self.held_out]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be distinct (optimised and held-out): {names}")
        self.prompts = list(prompts)
        self.eval_prompts = list(eval_prompts) if eval_prompts is not None else self.prompts[:4]
        self.out_dir = Path(out_dir)
        self.parts = DiffusionParts.from_pipeline(pipeline, config.sampler, config.guidance_scale, config.height, config.width)
        for module in (pipeline.vae, pipeline.text_encoder):
            module.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # the adapter's random init depends on the seed only
            torch.manual_seed(config.seed)
            self.params = add_lora(pipeline.unet, config.lora)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.train_scheduler = make_scheduler(pipeline, "ddpm")
        if pretrain_data is None or isinstance(pretrain_data, PretrainData):
            self.pretrain = pretrain_data
        elif isinstance(pretrain_data, (str, Path)):
            self.pretrain = PretrainData.from_jsonl(pretrain_data, self.parts.height, self.parts.width)
        else:
            self.pretrain = PretrainData(list(pretrain_data), self.parts.height, self.parts.width)
        self.step = 0
        self.rng = random.Random(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict] = []
        self.evaluations: list[dict] = []
        self.findings: list[dict] = []

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Score fixed-seed images of the eval prompts with the optimised and held-out rewards."""
        gen = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        prompts = [p for p in self.eval_prompts for _ in range(self.config.eval_images)]
        was_training = self.pipeline.unet.training
        self.pipeline.unet.eval()
        pixels = self.parts.sample(prompts, gen, self.config.num_inference_steps)
        self.pipeline.unet.train(was_training)
        scores = {}
        with torch.no_grad():
            for r in [self.reward] + self.held_out:
                scores[r.name] = [float(v) for v in r(pixels, prompts).float().cpu()]
        record = {"step": self.step, "prompts": prompts, "scores": scores,
                  "means": {k: float(np.mean(v)) for k, v in scores.items()}}
        self.evaluations.append(record)
        if len(self.evaluations) > 1 and self.held_out:
            self._check_hacking(self.evaluations[0], record)
        return record

    def _check_hacking(self, before: dict, after: dict) -> None:
        from ..evaluation.scores import ScoreTable
        from ..evaluation.warnings import reward_hacking

        def table(rec):
            images = [f"eval-{i}" for i in range(len(rec["prompts"]))]
            return ScoreTable(images, list(rec["prompts"]), {k: np.asarray(v) for k, v in rec["scores"].items()},
                              {k: True for k in rec["scores"]})

        found, _ = reward_hacking(table(before), table(after), self.reward.name, [r.name for r in self.held_out],
                                  tolerance_sd=self.config.hacking_tolerance_sd, seed=self.config.seed)
        for f in found:
            if f.severity == "warning":
                entry = json.loads(json.dumps({"step": self.step, **f.to_dict()}, default=float))  # plain types
                self.findings.append(entry)
                warnings.warn(RewardHackingWarning(f"step {self.step}: {f.message}"), stacklevel=3)

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        directory = self.checkpoint_root / f"step-{self.step:06d}"
        save_lora(self.pipeline.unet, directory)
        torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(), "rng": self.rng.getstate(),
                    "generator": self.generator.get_state(), "history": self.history, "evaluations": self.evaluations,
                    "findings": self.findings, "config": _config_dict(self.config)}, directory / STATE_FILE)
        (self.checkpoint_root / "latest").write_text(directory.name + "\n")
        return directory

    def latest_checkpoint(self) -> Path | None:
        marker = self.checkpoint_root / "latest"
        if not marker.is_file():
            return None
        directory = self.checkpoint_root / marker.read_text().strip()
        return directory if (directory / STATE_FILE).is_file() else None

    def load_checkpoint(self, directory: str | Path) -> None:
        directory = Path(directory)
        state = load_weights(directory / STATE_FILE)
        saved, current = state["config"], _config_dict(self.config)
        changed = [k for k in ("method", "lora", "batch_size", "grad_accum", "num_inference_steps", "seed")
                   if saved.get(k) != current.get(k)]
        if changed:
            raise ValueError(f"{directory}: the checkpoint was trained with different {', '.join(changed)}; "
                             f"use the same settings to resume, or a new output folder")
        load_lora(self.pipeline.unet, directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.history, self.evaluations, self.findings = state["history"], state["evaluations"], state["findings"]

    # -- training ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step (``grad_accum`` batches); returns its log record."""
        cfg = self.config
        self.pipeline.unet.train()
        self.optimizer.zero_grad(set_to_none=True)
        rewards, losses, pre_losses, mids = [], [], [], []
        for _ in range(cfg.grad_accum):
            prompts = [self.rng.choice(self.prompts) for _ in range(cfg.batch_size)]
            if cfg.method == "refl":
                loss, r, mid = refl_loss(self.parts, self.reward, prompts, self.generator, self.rng,
                                         cfg.num_inference_steps, cfg.refl_steps, cfg.reward_target, cfg.grad_scale)
                mids.append(mid)
            else:
                loss, r = draft_loss(self.parts, self.reward, prompts, self.generator, cfg.num_inference_steps,
                                     cfg.draft_k, cfg.grad_scale)
            total = loss
            if self.pretrain is not None and cfg.pretrain_weight > 0:
                pre = pretrain_loss(self.parts, self.pretrain, self.rng, self.generator, cfg.batch_size,
                                    self.train_scheduler)
                total = total + cfg.pretrain_weight * pre
                pre_losses.append(float(pre))
            (total / cfg.grad_accum).backward()
            rewards.append(r.float().cpu())
            losses.append(float(loss.detach()))
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        self.optimizer.step()
        self.step += 1
        record = {"step": self.step, "reward": float(torch.cat(rewards).mean()), "reward_loss": float(np.mean(losses))}
        if pre_losses:
            record["pretrain_loss"] = float(np.mean(pre_losses))
        if mids:
            record["refl_step"] = mids
        if norm is not None:
            record["grad_norm"] = float(norm)
        self.history.append(record)
        return record

    def train(self, progress: bool = False, resume: bool = True) -> FinetuneResult:
        """Run to ``config.steps`` optimizer steps, resuming from the latest checkpoint when present."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(_config_dict(cfg), indent=2) + "\n")
        latest = self.latest_checkpoint() if resume else None
        if latest is not None:
            self.load_checkpoint(latest)
        if not self.evaluations:
            self.evaluate()
        bar = _Bar(progress, cfg.steps, self.step, f"{cfg.method} -> {self.reward.name}")
        try:
            while self.step < cfg.steps:
                record = self.train_step()
                bar.update(record)
                last = self.step == cfg.steps
                if cfg.eval_every and (self.step % cfg.eval_every == 0) or last:
                    self.evaluate()
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                    self.save_checkpoint()
        finally:
            bar.close()
        self._write_logs()
        lora_dir = export_lora(self.pipeline, self.out_dir / "lora")
        return FinetuneResult(self.step, self.history, self.evaluations, self.findings, self.out_dir, lora_dir)

    def _write_logs(self) -> None:
        with open(self.out_dir / "train_log.jsonl", "w") as f:
            for r in self.history:
                f.write(json.dumps(r) + "\n")
        with open(self.out_dir / "evaluations.jsonl", "w") as f:
            for r in self.evaluations:
                f.write(json.dumps({"step": r["step"], "means": r["means"]}) + "\n")
        (self.out_dir / "warnings.json").write_text(json.dumps(self.findings, indent=2, default=float) + "\n")

    def sample_images(self, prompts: Sequence[str], seed: int = 0) -> list:
        """PIL images of ``prompts`` from the current (adapted) model with the training chain's sampler."""
        pixels = self.parts.sample(list(prompts), torch.Generator().manual_seed(seed), self.config.num_inference_steps)
        return to_pil(pixels)


def _config_dict(cfg: FinetuneConfig) -> dict:
    d = asdict(cfg)
    d["lora"]["targets"] = list(d["lora"]["targets"])
    d["refl_steps"] = list(d["refl_steps"])
    return d


class _Bar:
    def __init__(self, enabled: bool, total: int, done: int, label: str):
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.progress.start()
            self.task = self.progress.add_task(label, total=total, completed=done, info="")

    def update(self, record: dict) -> None:
        if self.progress is not None:
            info = f"reward {record['reward']:.4g}" if math.isfinite(record["reward"]) else ""
            self.progress.update(self.task, advance=1, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
