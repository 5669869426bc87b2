"""The policy reproduces the diffusers pipeline's own sampling loop and decoding.

`StableDiffusion3Pipeline.__call__` / `FluxPipeline.__call__` from the same initial noise vs Euler
steps with `policy.velocity` on the pipeline's scheduler grid: this pins the timestep scaling, the
CFG batch (SD3), the guidance embedding, latent packing and text ids (FLUX), and the VAE scaling
and shift, to what a user's checkpoint sees under its pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, PROMPTS

STEPS = 3
GUIDANCE = 4.5


def _pipeline_run(policy: Any, noise: torch.Tensor, output_type: str) -> Any:
    """The pipeline's sampling from `noise` `[B, C, h, w]` (packed first for FLUX)."""
    pipe = policy.pipeline
    b, c, h, w = noise.shape
    latents = pipe._pack_latents(noise, b, c, h, w) if policy.family == "flux" else noise
    return pipe(
        prompt=list(PROMPTS[:b]),
        latents=latents,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type=output_type,
    ).images


def _policy_run(policy: Any, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler steps `x ← x + (σ' − σ)·v` with the policy on the grid `sigmas` `[STEPS + 1]`."""
    b = noise.shape[0]
    cond = policy.encode(list(PROMPTS[:b]))
    uncond = policy.encode([""] * b)  # SD3's default negative prompt; FLUX ignores it
    x = noise
    for k in range(STEPS):
        v = policy.velocity(x, sigmas[k].expand(b), cond, uncond, GUIDANCE)  # [B, C, h, w]
        x = x + (sigmas[k + 1] - sigmas[k]) * v
    return x


def test_sampling_matches_pipeline(policy: Any) -> None:
    c, h, w = policy.latent_shape(IMAGE_SIZE, IMAGE_SIZE)
    noise = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(3))  # [B, C, h, w]
    expected = _pipeline_run(policy, noise, "latent")
    sigmas = policy.pipeline.scheduler.sigmas.clone()  # [STEPS + 1], the grid the pipeline used
    assert sigmas.shape == (STEPS + 1,) and sigmas[-1] == 0
    if policy.family == "flux":
        expected = policy.pipeline._unpack_latents(expected, IMAGE_SIZE, IMAGE_SIZE, 4)  # [B, C, h, w]
    ours = _policy_run(policy, noise, sigmas)
    # bit-exact: the same operations in the same dtypes and batch layout as the pipeline's loop
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_decode_matches_pipeline(policy: Any) -> None:
    c, h, w = policy.latent_shape(IMAGE_SIZE, IMAGE_SIZE)
    noise = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(4))
    expected = _pipeline_run(policy, noise, "np")  # [B, H, W, 3] float in [0, 1]
    ours = policy.decode(_policy_run(policy, noise, policy.pipeline.scheduler.sigmas.clone()))
    assert ours.shape == expected.shape and ours.dtype == np.uint8
    assert np.abs(ours / 255.0 - expected).max() <= 0.5 / 255 + 1e-5  # rounding to uint8 only
