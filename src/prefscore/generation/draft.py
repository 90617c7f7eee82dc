"""DRaFT-K (Clark et al. 2024, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards").

Sample the full chain; the first ``T - K`` steps run without gradients, the last ``K`` with them
(backpropagation through those steps only: DRaFT-K truncation, K = 1 is the paper's cheap default);
decode the final latents and maximise the reward: ``loss = -mean(reward) * grad_scale``.
"""

from __future__ import annotations

import torch

from .diffusion import DiffusionParts
from .rewards import Reward


def draft_loss(parts: DiffusionParts, reward: Reward, prompts: list[str], generator: torch.Generator,
               num_inference_steps: int, k: int = 1, grad_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, rewards (B,))`` for one DRaFT-K batch; gradients flow through the last ``k`` steps."""
    if not 1 <= k <= num_inference_steps:
        raise ValueError(f"DRaFT K must be between 1 and the number of steps ({num_inference_steps}), not {k}")
    embeds = parts.encode(prompts)
    latents = parts.latents(len(prompts), generator)
    parts.scheduler.set_timesteps(num_inference_steps, device=parts.device)
    timesteps = parts.scheduler.timesteps
    cut = len(timesteps) - k
    with torch.no_grad():
        for t in timesteps[:cut]:
            latents = parts.step(parts.noise_pred(latents, t, embeds), t, latents, generator).prev_sample
    for t in timesteps[cut:]:
        latents = parts.step(parts.noise_pred(latents, t, embeds), t, latents, generator).prev_sample
    rewards = reward(parts.decode(latents), prompts)
    return -rewards.mean() * grad_scale, rewards.detach()
