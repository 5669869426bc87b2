"""Velocity: shapes, dtypes, CFG batching (SD3), embedded guidance (FLUX), per-sample σ."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from tpgrpo.models.conditioning import Conditioning
from tpgrpo.models.flux import FluxPolicy

from .tiny import build_tiny_flux, make_inputs


@contextmanager
def recorded_calls(transformer: Any) -> Iterator[list[dict[str, Any]]]:
    """Record the keyword arguments of every transformer forward inside the block."""
    calls: list[dict[str, Any]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        calls.append(dict(kwargs))

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def test_forward_and_velocity_shape_dtype(policy: Any) -> None:
    latents, sigma, cond, uncond = make_inputs(policy, batch=3)
    for v in (policy.forward(latents, sigma, cond), policy.velocity(latents, sigma, cond, uncond, 4.5)):
        assert v.shape == latents.shape  # [B, C, h, w]
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all()


def test_encode_has_no_grad(policy: Any) -> None:
    for module in (policy.pipeline.text_encoder, policy.pipeline.text_encoder_2):
        module.requires_grad_(True)
    cond = policy.encode(["a photo of a red circle", "a photo of a square"])
    assert not cond.embeds.requires_grad and not cond.pooled.requires_grad
    assert cond.embeds.shape[0] == cond.pooled.shape[0] == 2
    # FLUX: T5 tokens only (max_sequence_length = 14); SD3: 14 CLIP tokens ⊕ 14 T5 tokens
    assert cond.embeds.shape[1] == {"sd3": 28, "flux": 14}[policy.family]
    if policy.family == "flux":
        assert cond.text_ids is not None and cond.text_ids.shape == (14, 3)
    else:
        assert cond.text_ids is None


def test_sd3_cfg_is_one_batched_forward(load: Any) -> None:
    policy = load("sd3")
    latents, sigma, cond, uncond = make_inputs(policy, batch=2)
    with recorded_calls(policy.transformer) as calls:
        v = policy.velocity(latents, sigma, cond, uncond, 4.5)
    assert len(calls) == 1
    assert calls[0]["hidden_states"].shape[0] == 4  # [uncond; cond] = 2B
    torch.testing.assert_close(calls[0]["timestep"], torch.cat([sigma, sigma]) * 1000)
    v_u = policy.forward(latents, sigma, uncond)
    v_c = policy.forward(latents, sigma, cond)
    torch.testing.assert_close(v, v_u + 4.5 * (v_c - v_u), rtol=1e-5, atol=1e-5)


def test_sd3_without_guidance_is_conditional(load: Any) -> None:
    policy = load("sd3")
    latents, sigma, cond, uncond = make_inputs(policy, batch=2)
    with recorded_calls(policy.transformer) as calls:
        v1 = policy.velocity(latents, sigma, cond, None, 4.5)
        v2 = policy.velocity(latents, sigma, cond, uncond, 1.0)
    assert [c["hidden_states"].shape[0] for c in calls] == [2, 2]
    assert torch.equal(v1, policy.forward(latents, sigma, cond))
    assert torch.equal(v2, v1)


def test_flux_guidance_is_embedded_not_batched(load: Any) -> None:
    policy = load("flux")
    latents, sigma, cond, uncond = make_inputs(policy, batch=2)
    with recorded_calls(policy.transformer) as calls:
        v = policy.velocity(latents, sigma, cond, uncond, 4.5)
        v_no_uncond = policy.velocity(latents, sigma, cond, None, 4.5)
        v_other = policy.velocity(latents, sigma, cond, uncond, 1.0)
    assert len(calls) == 3
    first = calls[0]
    assert first["hidden_states"].shape == (2, 16, 64)  # [B, (h/2)·(w/2), 4C]: never doubled
    assert first["guidance"].dtype == torch.float32
    assert torch.equal(first["guidance"], torch.full((2,), 4.5))
    assert torch.equal(first["timestep"], (sigma * 1000).to(torch.float32) / 1000)
    assert first["img_ids"].shape == (16, 3)
    assert torch.equal(v, v_no_uncond)  # uncond is ignored
    assert not torch.allclose(v, v_other)  # the guidance embedding is used


def test_flux_forward_default_guidance(load: Any) -> None:
    policy = load("flux")
    latents, sigma, cond, _ = make_inputs(policy)
    assert torch.equal(policy.forward(latents, sigma, cond), policy.velocity(latents, sigma, cond, None, 3.5))


def test_flux_without_guidance_embeds() -> None:
    policy = FluxPolicy(build_tiny_flux(guidance_embeds=False), max_sequence_length=14)
    latents, sigma, cond, uncond = make_inputs(policy)
    with recorded_calls(policy.transformer) as calls:
        v1 = policy.velocity(latents, sigma, cond, uncond, 4.5)
        v2 = policy.velocity(latents, sigma, cond, None, 1.0)
    assert [c["guidance"] for c in calls] == [None, None]
    assert torch.equal(v1, v2)


def test_flux_forward_errors(load: Any) -> None:
    policy = load("flux")
    latents, sigma, cond, _ = make_inputs(policy)
    with pytest.raises(ValueError, match="even height and width"):
        policy.forward(latents[:, :, :7], sigma, cond)
    with pytest.raises(ValueError, match="text_ids"):
        policy.forward(latents, sigma, Conditioning(cond.embeds, cond.pooled))
    with pytest.raises(ValueError, match="1 rows for 2 latents"):
        policy.forward(latents, sigma, cond.select([0]))


def test_per_sample_sigma_matches_separate_calls(policy: Any) -> None:
    latents, _, cond, uncond = make_inputs(policy, batch=3)
    sigma = torch.tensor([0.95, 0.5, 0.05])
    batched = policy.velocity(latents, sigma, cond, uncond, 4.5)
    for i in range(3):
        one = policy.velocity(latents[i : i + 1], sigma[i : i + 1], cond.select([i]), uncond.select([i]), 4.5)
        torch.testing.assert_close(batched[i : i + 1], one, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], policy.velocity(latents, sigma.flip(0), cond, uncond, 4.5)[0])


def test_same_inputs_same_output(load: Any, family: str) -> None:
    a, b = load(family), load(family)
    latents, sigma, cond, uncond = make_inputs(a)
    _, _, cond_b, uncond_b = make_inputs(b)
    assert torch.equal(cond.embeds, cond_b.embeds)
    v_a = a.velocity(latents, sigma, cond, uncond, 4.5)
    assert torch.equal(v_a, a.velocity(latents, sigma, cond, uncond, 4.5))
    assert torch.equal(v_a, b.velocity(latents, sigma, cond_b, uncond_b, 4.5))


def test_bf16_weights_float32_output(load: Any, family: str) -> None:
    policy = load(family, "bfloat16")
    assert policy.dtype == torch.bfloat16
    latents, sigma, cond, uncond = make_inputs(policy)
    assert cond.embeds.dtype == torch.bfloat16
    v = policy.velocity(latents, sigma, cond, uncond, 4.5)
    assert v.dtype == torch.float32 and v.shape == latents.shape
    reference = load(family)
    _, _, cond32, uncond32 = make_inputs(reference)
    v32 = reference.velocity(latents, sigma, cond32, uncond32, 4.5)
    assert (v - v32).abs().mean() < 0.1 * v32.abs().mean()  # same model, bf16 rounding only
    images = policy.decode(latents)
    assert images.dtype.name == "uint8"
