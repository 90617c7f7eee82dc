"""A tiny random-weight Stable Diffusion pipeline (16x16 images), for tests and trying the CLI offline.

It has the real pipeline's structure (CLIP text encoder, UNet2DConditionModel with cross-attention,
AutoencoderKL, DDIM scheduler) with a few thousand parameters per part; its images are noise, but
every code path (sampling, LoRA, ReFL, DRaFT, checkpoints) runs on it in seconds on a CPU. The CLIP
tokenizer files come from a local folder (e.g. any HF CLIP model directory).
"""

from __future__ import annotations

from pathlib import Path

import torch

#: pixel size of the tiny pipeline's images (latents are 8x8: the VAE halves the size once)
TINY_SIZE = 16


def build_tiny_pipeline(tokenizer_dir: str | Path, out_dir: str | Path | None = None, seed: int = 0):
    """A ``StableDiffusionPipeline`` with tiny random weights (seeded); saved to ``out_dir`` when given.

    ``tokenizer_dir``: a folder with CLIP tokenizer files (``vocab.json`` + ``merges.txt``).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64), latent_channels=4,
        norm_num_groups=32, sample_size=TINY_SIZE)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if out_dir is not None:
        pipe.save_pretrained(str(out_dir))
    return pipe
