"""Decoding and image encoding: shapes, dtypes, determinism."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .tiny import IMAGE_SIZE, make_inputs


def test_decode_shape_dtype(policy: Any) -> None:
    latents, *_ = make_inputs(policy, batch=3)
    images = policy.decode(latents)
    assert images.shape == (3, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert images.dtype == np.uint8
    assert np.array_equal(images, policy.decode(latents))  # deterministic (eval mode)


def test_encode_images_round_trip_shapes(policy: Any) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    c, h, w = policy.latent_shape(IMAGE_SIZE, IMAGE_SIZE)
    z1 = policy.encode_images(images, torch.Generator().manual_seed(0))
    z2 = policy.encode_images(images, torch.Generator().manual_seed(0))
    assert z1.shape == (2, c, h, w) and z1.dtype == torch.float32
    assert torch.equal(z1, z2)  # same generator, same posterior sample
    assert policy.decode(z1).shape == images.shape


def test_vae_scaling_and_shift_applied(policy: Any) -> None:
    """`decode` divides by scaling_factor and adds shift_factor before the VAE (both non-trivial here)."""
    vae = policy.pipeline.vae
    assert (vae.config.scaling_factor, vae.config.shift_factor) != (1.0, 0.0)
    latents, *_ = make_inputs(policy)
    raw = latents / vae.config.scaling_factor + vae.config.shift_factor  # [B, C, h, w]
    pixels = vae.decode(raw, return_dict=False)[0]  # [B, 3, H, W] in [-1, 1]
    expected = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert np.array_equal(policy.decode(latents), expected.detach().numpy())


class _DeviceCheckingVAE:
    """Stands in for an `AutoencoderKL` on another device: records where `decode` got its input."""

    def __init__(self, device: str, dtype: torch.dtype) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.config = SimpleNamespace(scaling_factor=1.5, shift_factor=0.1)
        self.seen: list[tuple[torch.device, torch.dtype]] = []

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        self.seen.append((z.device, z.dtype))
        return (torch.zeros(z.shape[0], 3, 8 * z.shape[2], 8 * z.shape[3]),)  # [B, 3, H, W] grey


def test_decode_latents_moves_latents_to_the_vae_device_and_dtype() -> None:
    """Latents kept on the CPU (as the branch stage's completions are) decode on the VAE's device:
    on a GPU the first run failed with 'Input type (CPUBFloat16Type) and weight type
    (CUDABFloat16Type) should be the same'. The meta device plays the GPU here."""
    from tpgrpo.models.vae import decode_latents

    vae = _DeviceCheckingVAE("meta", torch.bfloat16)
    images = decode_latents(vae, torch.zeros(2, 16, 4, 4))  # float32 on the CPU
    assert vae.seen == [(torch.device("meta"), torch.bfloat16)]
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
