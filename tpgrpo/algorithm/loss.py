"""The clipped-ratio GRPO loss with an optional KL penalty (SPEC.md §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LossOut:
    """The loss of one micro-batch and its detached statistics.

    Args:
        loss (`torch.Tensor`): scalar, differentiable: `policy_loss + β·kl`.
        policy_loss (`float`): mean clipped surrogate `max(−A·ratio, −A·clip(ratio, 1 ± ε))`.
        kl (`float`): mean KL to the reference policy (0.0 without one).
        clip_frac (`float`): fraction of samples with `|ratio − 1| > ε`.
        approx_kl (`float`): `0.5·mean((logp − logp_old)²)`.
        ratio_mean (`float`): mean ratio.
    """

    loss: Tensor
    policy_loss: float
    kl: float
    clip_frac: float
    approx_kl: float
    ratio_mean: float


def grpo_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantage: Tensor,
    *,
    clip_range: float,
    kl: Tensor | None = None,
    beta: float = 0.0,
) -> LossOut:
    """Clipped-ratio GRPO loss `mean(max(−A·r, −A·clip(r, 1−ε, 1+ε))) + β·mean(KL)`.

    Args:
        log_prob (`torch.Tensor`): `[B]` log-prob of the stored transitions under the current
            policy (differentiable).
        old_log_prob (`torch.Tensor`): `[B]` stored rollout log-prob (treated as a constant).
        advantage (`torch.Tensor`): `[B]` finite advantages.
        clip_range (`float`): `ε` (> 0).
        kl (`torch.Tensor`, *optional*): `[B]` KL to the reference policy (differentiable);
            required when `beta > 0`.
        beta (`float`, defaults to 0.0): KL weight (≥ 0).

    Returns:
        `LossOut`
    """
    if log_prob.ndim != 1 or log_prob.shape[0] < 1:
        raise ValueError(f"log_prob must have shape [B] with B >= 1, got {tuple(log_prob.shape)}")
    for name, other in (("old_log_prob", old_log_prob), ("advantage", advantage), ("kl", kl)):
        if other is not None and other.shape != log_prob.shape:
            raise ValueError(
                f"{name} must have the shape of log_prob {tuple(log_prob.shape)}, got {tuple(other.shape)}"
            )
    if not (math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be a finite number > 0, got {clip_range!r}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if beta > 0 and kl is None:
        raise ValueError("beta > 0 needs the per-sample kl to the reference policy")
    if not bool(torch.isfinite(advantage).all()):
        raise ValueError("advantage has NaN or infinite values")
    if not bool(torch.isfinite(old_log_prob).all()):
        raise ValueError("old_log_prob has NaN or infinite values")

    log_ratio = log_prob - old_log_prob.detach().to(log_prob.dtype)  # [B]
    ratio = torch.exp(log_ratio)  # [B]
    adv = advantage.detach().to(log_prob.dtype)  # [B]
    unclipped = -adv * ratio  # [B]
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # [B]
    policy_loss = torch.maximum(unclipped, clipped).mean()
    kl_mean = kl.mean() if kl is not None else log_prob.new_zeros(())
    loss = policy_loss + beta * kl_mean if kl is not None else policy_loss

    with torch.no_grad():
        clip_frac = ((ratio - 1).abs() > clip_range).float().mean()
        approx_kl = 0.5 * (log_ratio**2).mean()
    return LossOut(
        loss=loss,
        policy_loss=float(policy_loss.detach()),
        kl=float(kl_mean.detach()),
        clip_frac=float(clip_frac),
        approx_kl=float(approx_kl),
        ratio_mean=float(ratio.detach().mean()),
    )
