"""Tests of the clipped-ratio GRPO loss (SPEC.md §6)."""

from __future__ import annotations

import math

import pytest
import torch

from tpgrpo.algorithm import StepOut, grpo_loss, sampler_step


def test_hand_values() -> None:
    # A = [1, −1], ratio = [1.5, 0.5], ε = 0.2:
    #   sample 0: max(−1·1.5, −1·1.2) = −1.2; sample 1: max(0.5, 0.8) = 0.8 -> policy loss −0.2
    #   approx_kl = 0.5·(ln²1.5 + ln²0.5)/2 = 0.5·(0.1644019 + 0.4804530)/2 = 0.1612137
    #   ratio_mean = 1.0, clip_frac = 1.0 (both |ratio − 1| = 0.5 > 0.2)
    old = torch.tensor([-1.0, -2.0])
    log_prob = old + torch.tensor([math.log(1.5), math.log(0.5)])
    out = grpo_loss(log_prob, old, torch.tensor([1.0, -1.0]), clip_range=0.2)
    assert out.loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert out.policy_loss == pytest.approx(-0.2, abs=1e-6)
    assert out.approx_kl == pytest.approx(0.1612137, abs=1e-6)
    assert out.ratio_mean == pytest.approx(1.0, abs=1e-6)
    assert out.clip_frac == 1.0
    assert out.kl == 0.0


def _linear_policy_step(
    weight: torch.Tensor, prev_sample: torch.Tensor | None, noise: torch.Tensor | None
) -> StepOut:
    # A toy policy: velocity = weight·x, one cps step from σ = 0.8 to σ' = 0.6.
    sample = torch.linspace(-1, 1, 4 * 6).reshape(4, 6)  # [B, D]
    return sampler_step(
        "cps",
        sample,
        weight * sample,
        0.8,
        0.6,
        noise_level=0.7,
        sigma_guard=0.96,
        noise=noise,
        prev_sample=prev_sample,
    )


def test_ratio_exactly_one_on_first_pass() -> None:
    weight = torch.tensor(0.3, requires_grad=True)
    with torch.no_grad():
        rollout = _linear_policy_step(
            weight, None, torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
        )
    recomputed = _linear_policy_step(weight, rollout.next, None)
    assert rollout.log_prob is not None and recomputed.log_prob is not None
    advantage = torch.tensor([1.0, -0.5, 2.0, 0.0])
    out = grpo_loss(recomputed.log_prob, rollout.log_prob, advantage, clip_range=1e-5)
    # ratio = exp(0) = 1 exactly: nothing clipped, surrogate = −mean(A) = −0.625.
    assert out.ratio_mean == 1.0 and out.clip_frac == 0.0 and out.approx_kl == 0.0
    assert out.policy_loss == pytest.approx(-0.625)
    out.loss.backward()
    assert weight.grad is not None and weight.grad.item() != 0.0


def test_gradient_raises_positive_and_lowers_negative_log_probs() -> None:
    # Each sample has its own velocity (a leaf), so one descent step moves each log-prob alone.
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 8, generator=gen)
    velocity = torch.randn(2, 8, generator=gen, requires_grad=True)
    kwargs = {"noise_level": 0.7, "sigma_guard": 0.96}
    with torch.no_grad():
        rollout = sampler_step(
            "sde", sample, velocity, 0.8, 0.6, noise=torch.randn(2, 8, generator=gen), **kwargs
        )
    assert rollout.log_prob is not None
    advantage = torch.tensor([1.0, -1.0])
    step = sampler_step("sde", sample, velocity, 0.8, 0.6, prev_sample=rollout.next, **kwargs)
    assert step.log_prob is not None
    grpo_loss(step.log_prob, rollout.log_prob, advantage, clip_range=0.2).loss.backward()
    assert velocity.grad is not None
    with torch.no_grad():
        velocity -= 1e-3 * velocity.grad
        after = sampler_step("sde", sample, velocity, 0.8, 0.6, prev_sample=rollout.next, **kwargs).log_prob
    assert after is not None
    assert after[0] > rollout.log_prob[0]  # positive advantage: more likely
    assert after[1] < rollout.log_prob[1]  # negative advantage: less likely


def test_clipping_stops_gradient_in_the_direction_of_the_advantage() -> None:
    # ε = 0.2, ratios e^{±0.5} = 1.6487 / 0.6065, both outside [0.8, 1.2].
    # A > 0, ratio > 1.2: max(−r, −1.2) = −1.2 constant -> zero gradient (no push further up).
    # A > 0, ratio < 0.8: max(−r, −0.8) = −r -> d/dlogp = −r/B = −0.6065/4 (pushed back up).
    # A < 0, ratio < 0.8: max(r, 0.8) = 0.8 constant -> zero gradient.
    # A < 0, ratio > 1.2: max(r, 1.2) = r -> d/dlogp = +r/B = 1.6487/4 (pushed back down).
    delta = torch.tensor([0.5, -0.5, -0.5, 0.5])
    log_prob = torch.zeros(4, requires_grad=True)
    advantage = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = grpo_loss(log_prob, -delta, advantage, clip_range=0.2)
    out.loss.backward()
    assert log_prob.grad is not None
    expected = [0.0, -math.exp(-0.5) / 4, 0.0, math.exp(0.5) / 4]
    assert log_prob.grad.tolist() == pytest.approx(expected, abs=1e-7)
    assert out.clip_frac == 1.0
    # Inside [1 − ε, 1 + ε] the gradient is −A·ratio/B, unclipped.
    inside = torch.zeros(2, requires_grad=True)
    grpo_loss(inside, torch.zeros(2), torch.tensor([2.0, -1.0]), clip_range=0.2).loss.backward()
    assert inside.grad is not None and inside.grad.tolist() == pytest.approx([-1.0, 0.5])


def test_kl_term() -> None:
    # policy loss at ratio 1: −mean(A) = −0.5; kl mean 0.3, β = 0.5 -> loss = −0.5 + 0.15 = −0.35.
    log_prob = torch.zeros(2)
    kl = torch.tensor([0.2, 0.4], requires_grad=True)
    out = grpo_loss(log_prob, torch.zeros(2), torch.tensor([1.0, 0.0]), clip_range=0.2, kl=kl, beta=0.5)
    assert out.loss.item() == pytest.approx(-0.35)
    assert out.kl == pytest.approx(0.3) and out.policy_loss == pytest.approx(-0.5)
    out.loss.backward()
    assert kl.grad is not None and kl.grad.tolist() == pytest.approx([0.25, 0.25])  # β/B


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_prob": torch.zeros(2, 1)}, r"log_prob must have shape \[B\]"),
        ({"log_prob": torch.zeros(0)}, r"B >= 1"),
        ({"old_log_prob": torch.zeros(3)}, "old_log_prob must have the shape of log_prob"),
        ({"advantage": torch.zeros(2, 1)}, "advantage must have the shape of log_prob"),
        ({"kl": torch.zeros(3)}, "kl must have the shape of log_prob"),
        ({"advantage": torch.tensor([0.0, float("nan")])}, "advantage has NaN or infinite values"),
        ({"old_log_prob": torch.tensor([0.0, float("-inf")])}, "old_log_prob has NaN or infinite"),
        ({"clip_range": 0.0}, "clip_range must be a finite number > 0"),
        ({"beta": -1.0, "kl": torch.zeros(2)}, "beta must be a finite number >= 0"),
        ({"beta": 0.1}, "beta > 0 needs the per-sample kl"),
    ],
)
def test_bad_input(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "log_prob": torch.zeros(2),
        "old_log_prob": torch.zeros(2),
        "advantage": torch.ones(2),
        "clip_range": 0.2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grpo_loss(**args)  # type: ignore[arg-type]
