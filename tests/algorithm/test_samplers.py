"""Tests of the ODE / SDE / CPS / DanceGRPO sampler steps, transition log-probs and the KL."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgrpo.algorithm import (
    flow_match_sigmas,
    kl_to_reference,
    ode_step,
    reference_cps_log_prob,
    sampler_step,
    step_std,
    transition_log_prob,
)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.9189385…


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _const(value: float, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.float32)


# ---------------------------------------------------------------- noise level 0 == ODE, exactly


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_steps=st.integers(2, 50),
    shift=st.sampled_from([1.0, 3.0, 5.0]),
    bf16=st.booleans(),
)
def test_noise_level_zero_equals_ode_exactly(seed: int, num_steps: int, shift: float, bf16: bool) -> None:
    gen = _gen(seed)
    sigmas = flow_match_sigmas(num_steps, shift)
    dtype = torch.bfloat16 if bf16 else torch.float32
    # Per-sample timesteps: one sample per grid step. cps cannot take the last step (σ' = 0).
    for sampler, last in (("sde", num_steps), ("cps", num_steps - 1), ("dance", num_steps)):
        k = torch.arange(last)  # [B]
        sample = (3 * torch.randn(last, 4, 3, 3, generator=gen)).to(dtype)  # [B, 4, 3, 3]
        velocity = (3 * torch.randn(last, 4, 3, 3, generator=gen)).to(dtype)
        noise = torch.randn(last, 4, 3, 3, generator=gen)
        expected = ode_step(sample, velocity, sigmas[k], sigmas[k + 1])
        out = sampler_step(
            sampler,
            sample,
            velocity,
            sigmas[k],
            sigmas[k + 1],
            noise_level=0.0,
            sigma_guard=sigmas[1],
            noise=noise,
        )
        assert torch.equal(out.next, expected), sampler
        assert torch.equal(out.mean, expected), sampler
        assert torch.equal(out.std, torch.zeros(last)), sampler
        assert out.log_prob is None  # zero std: deterministic step, no density


def test_ode_hand_value() -> None:
    # s' = s + (σ' − σ)·v = 1 + (0.6 − 0.8)·2 = 0.6
    out = ode_step(_const(1.0, (2, 3)), _const(2.0, (2, 3)), 0.8, 0.6)
    assert out.dtype == torch.float32
    assert torch.allclose(out, _const(0.6, (2, 3)))
    step = sampler_step(
        "ode", _const(1.0, (2, 3)), _const(2.0, (2, 3)), 0.8, 0.6, noise_level=0.7, sigma_guard=0.9
    )
    assert torch.equal(step.next, out) and torch.equal(step.mean, out)
    assert torch.equal(step.std, torch.zeros(2)) and step.log_prob is None


# ---------------------------------------------------------------- SDE: formulas and empirical moments


def test_sde_hand_values_and_empirical_moments() -> None:
    # σ = 0.8, σ' = 0.6, a = 0.5, s = 1, v = 2:
    #   dt = −0.2, std = a·sqrt(σ/(1 − σ)) = 0.5·sqrt(4) = 1, step std = 1·sqrt(0.2) = 0.4472136
    #   x̂1 = s + (1 − σ)·v = 1.4, mean = s + [v + std²/(2σ)·x̂1]·dt = 1 + (2 + 0.625·1.4)·(−0.2) = 0.425
    n = 20_000
    noise = torch.randn(1, n, generator=_gen(0))
    out = sampler_step(
        "sde",
        _const(1.0, (1, n)),
        _const(2.0, (1, n)),
        0.8,
        0.6,
        noise_level=0.5,
        sigma_guard=0.9,
        noise=noise,
    )
    assert torch.allclose(out.mean, _const(0.425, (1, n)), atol=1e-6)
    assert out.std.shape == (1,)
    assert out.std.item() == pytest.approx(math.sqrt(0.2), abs=1e-6)
    # Over n draws: standard error of the mean 0.447/sqrt(n) ≈ 0.0032, of the std ≈ 0.0022.
    assert out.next.mean().item() == pytest.approx(0.425, abs=0.015)
    assert out.next.std().item() == pytest.approx(math.sqrt(0.2), abs=0.01)


def test_sde_sigma_one_guard() -> None:
    # σ = 1 would divide by 1 − σ = 0; σ̃ = σ_1 = 0.96 instead: std = 0.7·sqrt(1/0.04) = 3.5,
    # dt = −0.04, step std = 3.5·0.2 = 0.7. s = 1, v = 2: x̂1 = 1 + 0·2 = 1,
    # mean = 1 + (2 + 3.5²/2·1)·(−0.04) = 1 − 8.125·0.04 = 0.675.
    noise = torch.randn(1, 8, generator=_gen(1))
    out = sampler_step(
        "sde",
        _const(1.0, (1, 8)),
        _const(2.0, (1, 8)),
        1.0,
        0.96,
        noise_level=0.7,
        sigma_guard=0.96,
        noise=noise,
    )
    assert out.std.item() == pytest.approx(0.7, rel=1e-5)
    assert torch.allclose(out.mean, _const(0.675, (1, 8)), atol=1e-5)
    assert out.log_prob is not None and bool(torch.isfinite(out.log_prob).all())
    # Per sample: the guard applies only to the sample at σ = 1.
    sigma = torch.tensor([1.0, 0.8])
    sigma_next = torch.tensor([0.96, 0.6])
    two = sampler_step(
        "sde",
        _const(1.0, (2, 8)),
        _const(2.0, (2, 8)),
        sigma,
        sigma_next,
        noise_level=0.7,
        sigma_guard=torch.tensor(0.96),
        noise=torch.zeros(2, 8),
    )
    # second sample: std = 0.7·sqrt(0.8/0.2) = 1.4, step std = 1.4·sqrt(0.2) = 0.626099
    assert two.std.tolist() == pytest.approx([0.7, 1.4 * math.sqrt(0.2)], rel=1e-5)


@pytest.mark.parametrize("shift", [1.18, 1.32, 3.0])
def test_sde_guard_on_first_grid_level_not_exactly_one(shift: float) -> None:
    # diffusers' σ_0 is 0.99999988 for shift 1.18 and 1.0000001 for shift 1.32 (float32 rounding);
    # with a test σ == 1 the std would be a·sqrt(σ/1.2e-7) ≈ 2000·a or NaN. The guard covers it:
    # std = a·sqrt(σ_0/(1 − σ_1)).
    sigmas = flow_match_sigmas(10, shift)
    a = 0.7
    out = sampler_step(
        "sde",
        torch.ones(1, 4),
        torch.ones(1, 4),
        sigmas[0],
        sigmas[1],
        noise_level=a,
        sigma_guard=sigmas[1],
        noise=torch.zeros(1, 4),
    )
    s0, s1 = sigmas[0].item(), sigmas[1].item()
    expected = a * math.sqrt(s0 / (1 - s1)) * math.sqrt(s0 - s1)
    assert out.std.item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- CPS: formulas and empirical moments


def test_cps_hand_values_and_empirical_moments() -> None:
    # σ = 0.8, σ' = 0.5, a with sin(a·π/2) = 0.6 (so cos = 0.8), s = 1, v = 2:
    #   std = σ'·0.6 = 0.3, sqrt(σ'² − std²) = σ'·0.8 = 0.4
    #   x̂0 = s − σ·v = −0.6, x̂1 = s + (1 − σ)·v = 1.4
    #   mean = (1 − σ')·x̂0 + 0.4·x̂1 = −0.3 + 0.56 = 0.26
    a = 2 * math.asin(0.6) / math.pi
    n = 20_000
    noise = torch.randn(1, n, generator=_gen(2))
    out = sampler_step(
        "cps", _const(1.0, (1, n)), _const(2.0, (1, n)), 0.8, 0.5, noise_level=a, sigma_guard=0.9, noise=noise
    )
    assert torch.allclose(out.mean, _const(0.26, (1, n)), atol=1e-6)
    assert out.std.item() == pytest.approx(0.3, abs=1e-6)
    # standard error of the mean 0.3/sqrt(n) ≈ 0.0021
    assert out.next.mean().item() == pytest.approx(0.26, abs=0.01)
    assert out.next.std().item() == pytest.approx(0.3, abs=0.01)


def test_cps_full_noise_level() -> None:
    # a = 1: std = σ', sqrt(σ'² − σ'²) = 0, mean = (1 − σ')·x̂0 = 0.5·(−0.6) = −0.3 (σ = 0.8, s = 1, v = 2)
    out = sampler_step(
        "cps",
        _const(1.0, (1, 4)),
        _const(2.0, (1, 4)),
        0.8,
        0.5,
        noise_level=1.0,
        sigma_guard=0.9,
        noise=torch.zeros(1, 4),
    )
    assert torch.allclose(out.mean, _const(-0.3, (1, 4)), atol=1e-6)
    assert out.std.item() == pytest.approx(0.5)


# ---------------------------------------------------------------- DanceGRPO: formulas, moments, sde parity


def test_dance_hand_values_and_empirical_moments() -> None:
    # σ = 0.8, σ' = 0.6, η = 0.5, s = 1, v = 2:
    #   dt = −0.2, x̂0 = s − σ·v = −0.6, score = −(s − (1 − σ)·x̂0)/σ² = −(1 + 0.12)/0.64 = −1.75
    #   mean = s + dt·v − ½·η²·score·dt = 1 − 0.4 − 0.5·0.25·(−1.75)·(−0.2) = 0.6 − 0.04375 = 0.55625
    #   std = η·sqrt(σ − σ') = 0.5·sqrt(0.2) = 0.2236068
    n = 20_000
    noise = torch.randn(1, n, generator=_gen(11))
    out = sampler_step(
        "dance",
        _const(1.0, (1, n)),
        _const(2.0, (1, n)),
        0.8,
        0.6,
        noise_level=0.5,
        sigma_guard=0.9,
        noise=noise,
    )
    assert torch.allclose(out.mean, _const(0.55625, (1, n)), atol=1e-6)
    assert out.std.item() == pytest.approx(0.5 * math.sqrt(0.2), abs=1e-6)
    # standard error of the mean 0.224/sqrt(n) ≈ 0.0016
    assert out.next.mean().item() == pytest.approx(0.55625, abs=0.008)
    assert out.next.std().item() == pytest.approx(0.5 * math.sqrt(0.2), abs=0.006)


def test_dance_log_prob_hand_values() -> None:
    # Same step as above. At x = mean: −log std − log sqrt(2π) = −log 0.2236068 − 0.9189385 = 0.5789276.
    # At x = mean + std (noise 1 everywhere): 0.5 lower, 0.0789276.
    for eps, expected in ((0.0, 0.5789276), (1.0, 0.0789276)):
        out = sampler_step(
            "dance",
            _const(1.0, (1, 6)),
            _const(2.0, (1, 6)),
            0.8,
            0.6,
            noise_level=0.5,
            sigma_guard=0.9,
            noise=_const(eps, (1, 6)),
        )
        assert out.log_prob is not None
        assert out.log_prob.item() == pytest.approx(expected, abs=1e-6)


def test_dance_matches_closed_forms_on_a_grid() -> None:
    # The closed forms in float64, per sample on every step of a shift-3 grid (σ_0 = 1 and the
    # last step σ' = 0 included: the dance std η·sqrt(σ) is positive there).
    gen = _gen(12)
    sigmas = flow_match_sigmas(10, 3.0)
    k = torch.arange(10)  # [B]
    s, v, eps = (torch.randn(10, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    eta = 0.3
    out = sampler_step(
        "dance", s, v, sigmas[k], sigmas[k + 1], noise_level=eta, sigma_guard=sigmas[1], noise=eps.float()
    )
    sig = sigmas[k].double().view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    sig_next = sigmas[k + 1].double().view(-1, 1, 1, 1)
    x0 = s - sig * v
    score = -(s - (1 - sig) * x0) / sig**2
    mean = s + (sig_next - sig) * v - 0.5 * eta**2 * score * (sig_next - sig)
    std = eta * torch.sqrt(sig - sig_next)  # [B, 1, 1, 1]
    nxt = mean + std * eps
    log_prob = (-((nxt - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI).mean(dim=(1, 2, 3))
    assert torch.allclose(out.mean.double(), mean, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.std.double(), std.flatten(), rtol=1e-6)
    assert torch.allclose(out.next.double(), nxt, rtol=1e-5, atol=1e-5)
    assert out.log_prob is not None
    assert torch.allclose(out.log_prob.double(), log_prob, rtol=1e-5, atol=1e-5)
    # step_std (the window rule's std) is the sampler's own
    stds = step_std("dance", sigmas[:-1], sigmas[1:], noise_level=eta, sigma_guard=sigmas[1])
    assert torch.equal(stds, out.std)


@pytest.mark.parametrize("k", range(1, 10))
def test_dance_mean_equals_sde_mean_when_eta_matches(k: int) -> None:
    # Both drifts are s + dt·[v + c/(2σ)·(s + (1 − σ)·v)], c = η² (dance) and a²·σ/(1 − σ) (sde): with
    # η² = a²·σ/(1 − σ) the means agree, and so do the step stds (sde: a·sqrt(σ/(1 − σ))·sqrt(σ − σ')).
    # k ≥ 1: σ < σ_1 guard is not in play (it replaces σ = 1 by σ_1 in the sde std alone).
    gen = _gen(13)
    sigmas = flow_match_sigmas(10, 3.0)
    sigma, sigma_next = float(sigmas[k]), float(sigmas[k + 1])
    a = 0.7
    eta = a * math.sqrt(sigma / (1 - sigma))
    s, v, eps = (torch.randn(2, 3, 4, generator=gen) for _ in range(3))
    kw = {"sigma_guard": sigmas[1], "noise": eps}
    sde = sampler_step("sde", s, v, sigma, sigma_next, noise_level=a, **kw)
    dance = sampler_step("dance", s, v, sigma, sigma_next, noise_level=eta, **kw)
    assert torch.allclose(dance.mean, sde.mean, rtol=1e-5, atol=1e-5)
    assert torch.allclose(dance.std, sde.std, rtol=1e-5)
    assert dance.log_prob is not None and sde.log_prob is not None
    assert torch.allclose(dance.log_prob, sde.log_prob, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- log-probs


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_log_prob_equals_torch_normal(sampler: str) -> None:
    gen = _gen(3)
    sigmas = flow_match_sigmas(10)
    k = torch.tensor([0, 3, 5, 8])  # per-sample timesteps, σ_0 = 1 included
    sample = torch.randn(4, 2, 4, 4, generator=gen)
    velocity = torch.randn(4, 2, 4, 4, generator=gen)
    noise = torch.randn(4, 2, 4, 4, generator=gen)
    out = sampler_step(
        sampler,
        sample,
        velocity,
        sigmas[k],
        sigmas[k + 1],
        noise_level=0.7,
        sigma_guard=sigmas[1],
        noise=noise,
    )
    normal = torch.distributions.Normal(out.mean, out.std.view(4, 1, 1, 1))
    expected = normal.log_prob(out.next).mean(dim=(1, 2, 3))  # [B]
    assert out.log_prob is not None
    assert torch.allclose(out.log_prob, expected, rtol=1e-5, atol=1e-5)


def test_transition_log_prob_hand_value() -> None:
    # x = μ: log N(μ; μ, 1) = −log sqrt(2π) = −0.9189385 per element.
    # x − μ = 1, std = 2: −1/8 − log 2 − 0.9189385 = −1.7370857.
    x = torch.stack([torch.zeros(3), torch.ones(3)])  # [2, 3]
    lp = transition_log_prob(x, torch.zeros(2, 3), torch.tensor([1.0, 2.0]))
    assert lp.tolist() == pytest.approx([-LOG_SQRT_2PI, -0.125 - math.log(2) - LOG_SQRT_2PI], rel=1e-6)
    with pytest.raises(ValueError, match="std must be > 0"):
        transition_log_prob(x, torch.zeros(2, 3), torch.tensor([1.0, 0.0]))


def test_reference_cps_log_prob() -> None:
    # elements of x − μ: 1, −2, 3 -> −(1 + 4 + 9)/3 = −14/3
    x = torch.tensor([[1.0, -2.0, 3.0]])
    assert reference_cps_log_prob(x, torch.zeros(1, 3)).item() == pytest.approx(-14 / 3)
    noise = torch.randn(2, 5, generator=_gen(4))
    out = sampler_step(
        "cps",
        torch.ones(2, 5),
        torch.ones(2, 5),
        0.8,
        0.5,
        noise_level=0.7,
        sigma_guard=0.9,
        noise=noise,
        exact_cps_logprob=False,
    )
    assert out.log_prob is not None
    assert torch.allclose(out.log_prob, -((out.next - out.mean) ** 2).mean(dim=1))


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_recompute_stored_transition(sampler: str) -> None:
    gen = _gen(5)
    sample, velocity, noise = (torch.randn(3, 2, 5, generator=gen) for _ in range(3))
    kwargs = {"noise_level": 0.7, "sigma_guard": 0.96}
    drawn = sampler_step(sampler, sample, velocity, 0.8, 0.6, noise=noise, **kwargs)
    # The update recomputes with the stored state: same mean, same log-prob, bit for bit.
    again = sampler_step(sampler, sample, velocity, 0.8, 0.6, prev_sample=drawn.next, **kwargs)
    assert torch.equal(again.next, drawn.next)
    assert torch.equal(again.mean, drawn.mean)
    assert drawn.log_prob is not None and again.log_prob is not None
    assert torch.equal(again.log_prob, drawn.log_prob)


def test_log_prob_gradient_reaches_velocity_only_through_mean() -> None:
    gen = _gen(6)
    sample = torch.randn(2, 6, generator=gen)
    velocity = torch.randn(2, 6, generator=gen, requires_grad=True)
    prev = torch.randn(2, 6, generator=gen)
    out = sampler_step("cps", sample, velocity, 0.8, 0.6, noise_level=0.7, sigma_guard=0.96, prev_sample=prev)
    assert out.log_prob is not None
    out.log_prob.sum().backward()
    assert velocity.grad is not None and bool((velocity.grad != 0).any())


# ---------------------------------------------------------------- batching, dtypes


@pytest.mark.parametrize("sampler", ["ode", "sde", "cps", "dance"])
def test_per_sample_timesteps_match_single_calls(sampler: str) -> None:
    gen = _gen(7)
    sigmas = flow_match_sigmas(10)
    k = torch.tensor([0, 4, 8, 2])
    sample, velocity = torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, 5, generator=gen)
    noise = None if sampler == "ode" else torch.randn(4, 3, 5, generator=gen)
    kwargs = {"noise_level": 0.7, "sigma_guard": sigmas[1]}
    batched = sampler_step(sampler, sample, velocity, sigmas[k], sigmas[k + 1], noise=noise, **kwargs)
    for i in range(4):
        single = sampler_step(
            sampler,
            sample[i : i + 1],
            velocity[i : i + 1],
            sigmas[k[i]],
            sigmas[k[i] + 1],
            noise=None if noise is None else noise[i : i + 1],
            **kwargs,
        )
        assert torch.equal(single.next[0], batched.next[i])
        assert torch.equal(single.std[0], batched.std[i])
        if single.log_prob is not None and batched.log_prob is not None:
            assert torch.allclose(single.log_prob[0], batched.log_prob[i], rtol=1e-6)


def test_bf16_inputs_are_stepped_in_float32() -> None:
    # s = 1, v = −0.01, σ = 0.8 -> σ' = 0.7: s' = 1 + (−0.1)(−0.01) = 1.001. bf16 (8-bit mantissa,
    # spacing 2^-7 near 1) would round that back to 1.0; float32 keeps it.
    sample = torch.ones(1, 4, dtype=torch.bfloat16)
    velocity = torch.full((1, 4), -0.01, dtype=torch.bfloat16)
    out = sampler_step(
        "sde", sample, velocity, 0.8, 0.7, noise_level=0.0, sigma_guard=0.9, noise=torch.zeros(1, 4)
    )
    assert out.next.dtype == out.mean.dtype == out.std.dtype == torch.float32
    assert out.next[0, 0].item() == pytest.approx(1.001, abs=2e-5)
    assert ode_step(sample, velocity, 0.8, 0.7).dtype == torch.float32


# ---------------------------------------------------------------- zero std


def test_zero_std_log_prob() -> None:
    sigmas = flow_match_sigmas(4)
    x = torch.ones(2, 3)
    # cps at the last step (σ' = 0) draws deterministically: log_prob None.
    last = sampler_step("cps", x, x, sigmas[3], sigmas[4], noise_level=0.7, sigma_guard=sigmas[1], noise=x)
    assert last.log_prob is None and torch.equal(last.std, torch.zeros(2))
    # A batch mixing zero and non-zero std is refused.
    with pytest.raises(ValueError, match="1 of 2 samples have zero step std"):
        sampler_step("cps", x, x, sigmas[2:4], sigmas[3:5], noise_level=0.7, sigma_guard=sigmas[1], noise=x)
    # Recomputing a deterministic transition is refused.
    with pytest.raises(ValueError, match="zero step std"):
        sampler_step("sde", x, x, 0.8, 0.6, noise_level=0.0, sigma_guard=0.9, prev_sample=x)


# ---------------------------------------------------------------- KL


def test_kl_to_reference_hand_value() -> None:
    # mean − mean_ref = 0.1 everywhere, std 0.5: 0.01 / (2·0.25) = 0.02; second sample equal means: 0.
    mean = torch.stack([torch.full((4,), 0.1), torch.zeros(4)]).requires_grad_()
    kl = kl_to_reference(mean, torch.zeros(2, 4), torch.tensor([0.5, 0.5]))
    assert kl.tolist() == pytest.approx([0.02, 0.0])
    kl.sum().backward()
    # d/dμ of mean((μ − μ_ref)²)/(2·0.25) = 2(μ − μ_ref)/4/0.5 = 0.1 per element of sample 0
    assert mean.grad is not None
    assert torch.allclose(mean.grad[0], torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="std must be > 0"):
        kl_to_reference(mean, torch.zeros(2, 4), 0.0)


# ---------------------------------------------------------------- bad input


def _step(**overrides: object) -> None:
    x = torch.zeros(2, 3)
    args: dict[str, object] = {
        "sampler": "sde",
        "sample": x,
        "velocity": x,
        "sigma": 0.8,
        "sigma_next": 0.6,
        "noise_level": 0.7,
        "sigma_guard": 0.9,
        "noise": x,
    }
    args.update(overrides)
    sampler_step(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"sampler": "euler"}, "unknown sampler 'euler'; valid samplers: ode, sde, cps, dance"),
        ({"velocity": torch.zeros(2, 4)}, "velocity must have the shape"),
        ({"noise": torch.zeros(3, 3)}, "noise must have the shape"),
        (
            {"sample": torch.zeros(3), "velocity": torch.zeros(3), "noise": torch.zeros(3)},
            r"batch \[B, \.\.\.\]",
        ),
        ({"noise": None}, "exactly one of noise"),
        ({"prev_sample": torch.zeros(2, 3)}, "exactly one of noise"),
        ({"sampler": "ode"}, "pass neither noise nor prev_sample"),
        ({"sigma": 0.6, "sigma_next": 0.8}, "0 <= sigma_next < sigma <= 1"),
        ({"sigma": 1.2}, "0 <= sigma_next < sigma <= 1"),
        ({"sigma": float("nan")}, "0 <= sigma_next < sigma <= 1"),
        ({"sigma": torch.tensor([0.8, 0.8, 0.8])}, r"sigma must be a scalar or of shape \[B\] = \[2\]"),
        ({"noise_level": -0.1}, "noise_level must be a finite number >= 0"),
        ({"sampler": "cps", "noise_level": 1.5}, r"cps noise_level must lie in \[0, 1\]"),
        ({"sigma_guard": 1.0}, r"sigma_guard .* must lie in \(0, 1\)"),
    ],
)
def test_sampler_step_bad_input(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _step(**overrides)
