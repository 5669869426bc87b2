"""Decoding and image encoding: shapes, dtypes, determinism."""

from __future__ import annotations

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
