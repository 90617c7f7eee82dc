"""ReFL (Reward Feedback Learning, Xu et al. 2023, as in ``THUDM/ImageReward:ImageReward/ReFL.py``).

One training sample: draw a late step index ``mid`` uniformly from ``step_range`` (inclusive; the
reference uses ``randint(30, 39)`` of 40 steps), run the denoising loop **without gradients** up to
it, take **one step with gradients** and its one-step prediction ``pred_original_sample`` (x0-hat),
decode it with the VAE, map to [0, 1], score it with the frozen differentiable reward, and use

    loss = mean(relu(target - reward)) * grad_scale          (target 2, grad_scale 1e-3)

plus, in :mod:`prefscore.generation.finetune`, the regularising pre-training (denoising MSE) loss.
"""

from __future__ import annotations

import random

import torch

from .diffusion import DiffusionParts
from .rewards import Reward


def refl_loss(parts: DiffusionParts, reward: Reward, prompts: list[str], generator: torch.Generator, rng: random.Random,
              num_inference_steps: int, step_range: tuple[int, int], target: float = 2.0,
              grad_scale: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(loss, rewards (B,), mid)`` for one ReFL batch; gradients flow to the UNet's trainable weights."""
    lo, hi = step_range
    if not 0 <= lo <= hi < num_inference_steps:
        raise ValueError(f"ReFL step range {step_range} must lie within 0..{num_inference_steps - 1}")
    mid = rng.randint(lo, hi)
    embeds = parts.encode(prompts)
    latents = parts.latents(len(prompts), generator)
    parts.scheduler.set_timesteps(num_inference_steps, device=parts.device)
    timesteps = parts.scheduler.timesteps
    with torch.no_grad():
        for t in timesteps[:mid]:
            latents = parts.step(parts.noise_pred(latents, t, embeds), t, latents, generator).prev_sample
    t = timesteps[mid]
    x0 = parts.step(parts.noise_pred(latents, t, embeds), t, latents, generator).pred_original_sample
    rewards = reward(parts.decode(x0), prompts)
    loss = torch.relu(target - rewards).mean() * grad_scale
    return loss, rewards.detach(), mid
