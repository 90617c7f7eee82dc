"""The pieces of a Stable-Diffusion-style pipeline that reward fine-tuning drives step by step.

:class:`DiffusionParts` wraps a diffusers pipeline with a UNet, a VAE, a CLIP text encoder and
tokenizer (Stable Diffusion 1.x / 2.x layout): prompt encoding with classifier-free guidance, one
guided noise prediction, a scheduler of its own (DDPM as in ImageReward's ReFL, or DDIM), latents
from a seeded generator, and VAE decoding to pixels in [0, 1] that stay differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEDULERS = ("ddpm", "ddim")


def make_scheduler(pipeline, kind: str):
    """A fresh DDPM or DDIM scheduler from the pipeline's scheduler config (the training noise schedule)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, not {kind!r}")
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls.from_config(pipeline.scheduler.config)


@dataclass
class DiffusionParts:
    """UNet + VAE + text encoder of ``pipeline``, run with ``scheduler`` at ``height x width`` pixels."""

    pipeline: object
    scheduler: object
    guidance_scale: float
    height: int
    width: int

    @classmethod
    def from_pipeline(cls, pipeline, scheduler: str = "ddpm", guidance_scale: float = 7.5,
                      height: int | None = None, width: int | None = None) -> "DiffusionParts":
        missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipeline, n, None) is None]
        if missing:
            raise ValueError(f"reward fine-tuning needs a Stable-Diffusion-style pipeline (unet, vae, text_encoder, "
                             f"tokenizer, scheduler); this {type(pipeline).__name__} lacks {', '.join(missing)}")
        scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        size = pipeline.unet.config.sample_size * scale
        return cls(pipeline, make_scheduler(pipeline, scheduler), float(guidance_scale), int(height or size),
                   int(width or size))

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings for the UNet: ``[negative; positive]`` with guidance, else positive only (no grad)."""
        with torch.no_grad():
            pos, neg = self.pipeline.encode_prompt(prompts, self.device, 1, self.cfg, negative_prompt=None)
        return torch.cat([neg, pos]) if self.cfg else pos

    def latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Initial noise ``(n, C, h, w)`` drawn on the CPU from ``generator`` (device independent), scaled
        by the scheduler's ``init_noise_sigma``."""
        c = self.unet.config.in_channels
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (n, c, self.height // scale, self.width // scale)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return (noise * self.scheduler.init_noise_sigma).to(self.device, self.unet.dtype)

    def noise_pred(self, latents: torch.Tensor, t, embeds: torch.Tensor) -> torch.Tensor:
        """The guided model output at timestep ``t``."""
        inp = torch.cat([latents, latents]) if self.cfg else latents
        inp = self.scheduler.scale_model_input(inp, t)
        out = self.unet(inp, t, encoder_hidden_states=embeds).sample
        if not self.cfg:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)

    def step(self, out: torch.Tensor, t, latents: torch.Tensor, generator: torch.Generator):
        """One scheduler step; returns the scheduler output (``prev_sample``, ``pred_original_sample``)."""
        kwargs = {"generator": generator} if "generator" in _step_params(self.scheduler) else {}
        return self.scheduler.step(out, t, latents, **kwargs)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels ``(B, 3, H, W)`` in [0, 1] (float32; differentiable)."""
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def sample(self, prompts: list[str], generator: torch.Generator, num_inference_steps: int) -> torch.Tensor:
        """Full denoising without gradients: pixels ``(B, 3, H, W)`` in [0, 1]."""
        with torch.no_grad():
            embeds = self.encode(prompts)
            latents = self.latents(len(prompts), generator)
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
            for t in self.scheduler.timesteps:
                latents = self.step(self.noise_pred(latents, t, embeds), t, latents, generator).prev_sample
            return self.decode(latents)


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)


def to_pil(pixels: torch.Tensor) -> list:
    """Pixels ``(B, 3, H, W)`` in [0, 1] -> PIL images (rounded to 8 bits, as diffusers saves them)."""
    from PIL import Image

    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
