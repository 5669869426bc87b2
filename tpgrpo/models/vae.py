"""Latents ↔ images through a diffusers `AutoencoderKL`, with the pipeline's scaling and shift.

Shared by every family: SD3 and FLUX both store `(z − shift_factor)·scaling_factor` as the latent
the transformer sees, and decode `latent / scaling_factor + shift_factor`, exactly as
`StableDiffusion3Pipeline.__call__` / `FluxPipeline.__call__` do before `vae.decode`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor) -> np.ndarray:
    """Decode scaled latents to uint8 images.

    Args:
        vae (`AutoencoderKL`): the pipeline's VAE.
        latents (`torch.Tensor`): `[B, C, h, w]` scaled latents (any float dtype, on any device:
            they are moved to the VAE's).

    Returns:
        `np.ndarray`: `[B, H, W, 3]` uint8 images.
    """
    z = (
        latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    )  # [B, C, h, w]
    images = vae.decode(z, return_dict=False)[0].float()  # [B, 3, H, W] in [-1, 1]
    images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3]


@torch.no_grad()
def encode_pixels(
    vae: Any, images: np.ndarray, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Encode uint8 images to scaled latents (a sample of the posterior).

    Args:
        vae (`AutoencoderKL`): the pipeline's VAE.
        images (`np.ndarray`): `[B, H, W, 3]` uint8 images.
        device (`torch.device`): where the VAE runs.
        generator (`torch.Generator`, *optional*): draws the posterior sample.

    Returns:
        `torch.Tensor`: `[B, C, h, w]` float32 scaled latents.
    """
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, H, W]
    latents = vae.encode(x.to(vae.dtype)).latent_dist.sample(generator)  # [B, C, h, w]
    return (latents.float() - vae.config.shift_factor) * vae.config.scaling_factor
