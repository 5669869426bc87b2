"""One step of the ODE, Flow-GRPO SDE, CPS and DanceGRPO samplers, with the transition log-prob (SPEC.md §2).

A step maps the state `s` at noise level `σ` to the state at `σ' < σ` given the velocity `v`.
Every sample of a batch may sit at its own noise level (`sigma`, `sigma_next` of shape `[B]`), so
an update batch can mix transitions from different grid steps.

All step arithmetic runs in float32, whatever the dtype of the inputs: the model runs in
bf16/fp16, whose 8/11-bit mantissas cannot resolve the small change one step makes to the state,
and the `std²` terms overflow fp16.

`dance` is DanceGRPO's SDE step (`flux_step` with `sde_solver=True` in XueZeyue/DanceGRPO): a
constant diffusion coefficient η (`noise_level`), `std = η·sqrt(σ − σ')`. Its drift has the form of
Flow-GRPO's `sde` (`mean = s + dt·[v + c/(2σ)·(s + (1 − σ)·v)]`, with `c = η²` here and
`c = a²·σ/(1 − σ)` there), so the two means agree when `η² = a²·σ/(1 − σ)`. Its log-prob is the
exact Gaussian density averaged over elements; the reference code's line break drops the
`− log std − log sqrt(2π)` terms, a per-step constant that cancels in the ratio (same gradients).

Zero step std (noise level 0, or `cps` at `σ' = 0`): the step is deterministic and has no density.
A drawn step then returns `log_prob=None`; recomputing a stored transition with zero std, or a
batch where only some samples have zero std, raises `ValueError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SAMPLERS = ("ode", "sde", "cps", "dance")

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# diffusers' σ_0 is 1 only up to float32 rounding for some shifts (e.g. 1.0000001 for shift 1.32).
_SIGMA_MAX = 1 + 2**-20


@dataclass
class StepOut:
    """The result of one sampler step.

    Args:
        next (`torch.Tensor`): `[B, ...]` float32 next state `s_{k+1}`.
        mean (`torch.Tensor`): `[B, ...]` float32 mean of the step's Gaussian (the ODE step for `ode`).
        std (`torch.Tensor`): `[B]` float32 step std: `std·sqrt(-dt)` for `sde`, `std` for `cps`,
            `η·sqrt(σ − σ')` for `dance`, 0 for `ode`.
        log_prob (`torch.Tensor` or `None`): `[B]` float32 log-density of `next`, averaged over
            latent elements; `None` for `ode` and for zero-std steps.
    """

    next: Tensor  # [B, ...]
    mean: Tensor  # [B, ...]
    std: Tensor  # [B]
    log_prob: Tensor | None  # [B]


def _batch_view(x: Tensor, ndim: int) -> Tensor:
    """`[B]` -> `[B, 1, …, 1]` with `ndim` dims, to broadcast against a state."""
    return x.reshape(-1, *([1] * (ndim - 1)))


def _per_sample(value: Tensor | float, batch: int, device: torch.device, name: str) -> Tensor:
    """A scalar or `[B]` value as a float32 `[B]` tensor on `device`."""
    out = torch.as_tensor(value, dtype=torch.float32, device=device)
    if out.ndim == 0:
        return out.expand(batch)  # [B]
    if tuple(out.shape) != (batch,):
        raise ValueError(f"{name} must be a scalar or of shape [B] = [{batch}], got shape {tuple(out.shape)}")
    return out  # [B]


def _check_state(sample: Tensor, name: str) -> None:
    if sample.ndim < 2 or sample.shape[0] < 1:
        raise ValueError(f"{name} must be a batch [B, ...] with B >= 1, got shape {tuple(sample.shape)}")


def _check_like(other: Tensor | None, sample: Tensor, name: str) -> None:
    if other is not None and other.shape != sample.shape:
        raise ValueError(
            f"{name} must have the shape of sample {tuple(sample.shape)}, got {tuple(other.shape)}"
        )


def _grid_pair(sigma: Tensor | float, sigma_next: Tensor | float, sample: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample `σ`, `σ'` as float32 `[B, 1, …]`, checked to be a denoising step."""
    batch = sample.shape[0]
    sig = _per_sample(sigma, batch, sample.device, "sigma")  # [B]
    sig_next = _per_sample(sigma_next, batch, sample.device, "sigma_next")  # [B]
    if not bool(((sig_next >= 0) & (sig_next < sig) & (sig <= _SIGMA_MAX)).all()):
        raise ValueError(
            "sigma and sigma_next must satisfy 0 <= sigma_next < sigma <= 1 for every sample "
            "(one denoising step of the grid; noise levels, not 1000·σ timesteps)"
        )
    return _batch_view(sig, sample.ndim), _batch_view(sig_next, sample.ndim)  # [B, 1, ...] each


def _euler(sample: Tensor, velocity: Tensor, sig: Tensor, sig_next: Tensor) -> Tensor:
    dt = sig_next - sig  # [B, 1, ...]
    return sample + dt * velocity  # [B, ...]


def ode_step(sample: Tensor, velocity: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """The Euler step `s' = s + (σ' − σ)·v`.

    Args:
        sample (`torch.Tensor`): `[B, ...]` state `s_k` at `σ`, any float dtype.
        velocity (`torch.Tensor`): `[B, ...]` model velocity at `(s_k, σ)`, any float dtype.
        sigma (`torch.Tensor` or `float`): `[B]` or scalar current noise level `σ`.
        sigma_next (`torch.Tensor` or `float`): `[B]` or scalar next noise level `σ' < σ`.

    Returns:
        `torch.Tensor`: `[B, ...]` float32 next state.
    """
    _check_state(sample, "sample")
    _check_like(velocity, sample, "velocity")
    # float32: a bf16 state cannot resolve the change one step makes (see module docstring).
    sample, velocity = sample.float(), velocity.float()  # [B, ...]
    sig, sig_next = _grid_pair(sigma, sigma_next, sample)  # [B, 1, ...]
    return _euler(sample, velocity, sig, sig_next)  # [B, ...]


def transition_log_prob(prev_sample: Tensor, mean: Tensor, std: Tensor | float) -> Tensor:
    """Gaussian log-density of a transition, averaged over latent elements.

    `mean_elements(−(x − μ)² / (2·std²) − log std − log sqrt(2π))` per sample.

    Args:
        prev_sample (`torch.Tensor`): `[B, ...]` the state reached, `x`.
        mean (`torch.Tensor`): `[B, ...]` the step's mean `μ` (differentiable).
        std (`torch.Tensor` or `float`): `[B]` or scalar step std, all > 0.

    Returns:
        `torch.Tensor`: `[B]` float32.
    """
    _check_state(mean, "mean")
    _check_like(prev_sample, mean, "prev_sample")
    std_b = _per_sample(std, mean.shape[0], mean.device, "std")  # [B]
    if not bool((std_b > 0).all()):
        raise ValueError("std must be > 0 for every sample: a zero-std step has no log-density")
    std_b = _batch_view(std_b, mean.ndim)  # [B, 1, ...]
    diff = prev_sample.float() - mean.float()  # [B, ...]
    log_density = -(diff**2) / (2 * std_b**2) - torch.log(std_b) - _LOG_SQRT_2PI  # [B, ...]
    return log_density.mean(dim=tuple(range(1, mean.ndim)))  # [B]


def reference_cps_log_prob(prev_sample: Tensor, mean: Tensor) -> Tensor:
    """The reference code's `cps` log-prob: `mean_elements(−(x − μ)²)`, no variance normalisation.

    Args:
        prev_sample (`torch.Tensor`): `[B, ...]` the state reached.
        mean (`torch.Tensor`): `[B, ...]` the step's mean (differentiable).

    Returns:
        `torch.Tensor`: `[B]` float32.
    """
    _check_state(mean, "mean")
    _check_like(prev_sample, mean, "prev_sample")
    diff = prev_sample.float() - mean.float()  # [B, ...]
    return -(diff**2).mean(dim=tuple(range(1, mean.ndim)))  # [B]


def kl_to_reference(mean: Tensor, mean_ref: Tensor, std: Tensor | float) -> Tensor:
    """KL between the policy's and the reference policy's step Gaussians of equal std.

    `mean_elements((μ_θ − μ_ref)²) / (2·std²)` per sample.

    Args:
        mean (`torch.Tensor`): `[B, ...]` policy step mean (differentiable).
        mean_ref (`torch.Tensor`): `[B, ...]` reference (base model) step mean at the same state.
        std (`torch.Tensor` or `float`): `[B]` or scalar step std, all > 0.

    Returns:
        `torch.Tensor`: `[B]` float32.
    """
    _check_state(mean, "mean")
    _check_like(mean_ref, mean, "mean_ref")
    std_b = _per_sample(std, mean.shape[0], mean.device, "std")  # [B]
    if not bool((std_b > 0).all()):
        raise ValueError("std must be > 0 for every sample: the KL of zero-std steps is undefined")
    diff = mean.float() - mean_ref.float()  # [B, ...]
    return (diff**2).mean(dim=tuple(range(1, mean.ndim))) / (2 * std_b**2)  # [B]


def _sde_std(sig: Tensor, sigma_guard: Tensor | float, noise_level: float) -> Tensor:
    """The Flow-GRPO SDE's `std = a·sqrt(σ / (1 − σ̃))` (before the `sqrt(−dt)` of a step), `[B, 1, ...]`."""
    guard = _batch_view(_per_sample(sigma_guard, sig.shape[0], sig.device, "sigma_guard"), sig.ndim)
    if not bool(((guard > 0) & (guard < 1)).all()):
        raise ValueError("sigma_guard (σ_1 of the grid) must lie in (0, 1)")
    # σ̃ = σ_1 where σ = 1. The first grid level is 1 only up to float32 rounding for some
    # shifts (1 ± 1 ulp, where 1 − σ is 0, negative or tiny), so the guard applies to every σ
    # above σ_1; on a grid that is exactly σ_0.
    sig_safe = torch.where(sig > guard, guard, sig)  # [B, 1, ...] σ̃
    return noise_level * torch.sqrt(sig / (1 - sig_safe))  # [B, 1, ...]


def _cps_std(sig_next: Tensor, noise_level: float) -> Tensor:
    """The CPS step std `σ'·sin(a·π/2)`, shaped as `sig_next`."""
    return sig_next * math.sin(noise_level * math.pi / 2)


def _dance_std(sig: Tensor, sig_next: Tensor, noise_level: float) -> Tensor:
    """The DanceGRPO step std `η·sqrt(σ − σ')` (a constant diffusion coefficient η), shaped as `sig`."""
    return noise_level * torch.sqrt(sig - sig_next)


def _check_noise_level(sampler: str, noise_level: float) -> None:
    if not (math.isfinite(noise_level) and noise_level >= 0):
        raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level!r}")
    if sampler == "cps" and noise_level > 1:
        raise ValueError(f"the cps noise_level must lie in [0, 1] (std = σ'·sin(a·π/2)), got {noise_level}")


def step_std(
    sampler: str,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    *,
    noise_level: float,
    sigma_guard: Tensor | float,
) -> Tensor:
    """The std of the Gaussian a `sampler` step draws from (SPEC §2's stepstd), per step.

    `std·sqrt(−dt)` for `sde`, `σ'·sin(a·π/2)` for `cps`, `η·sqrt(σ − σ')` for `dance` (η = the
    noise level), 0 for `ode`: the same arithmetic as
    `sampler_step`'s `StepOut.std`, without a state or a model.

    Args:
        sampler (`str`): one of `SAMPLERS`.
        sigma (`torch.Tensor` or `float`): `[S]` or scalar noise levels `σ`.
        sigma_next (`torch.Tensor` or `float`): `[S]` or scalar next noise levels `σ' < σ`.
        noise_level (`float`): `a`.
        sigma_guard (`torch.Tensor` or `float`): `σ_1` of the grid (the `sde` guard).

    Returns:
        `torch.Tensor`: `[S]` float32 (`[1]` for scalars).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    n = max(torch.as_tensor(sigma).numel(), torch.as_tensor(sigma_next).numel())
    anchor = torch.zeros(n, 1)  # [S, 1]: a stand-in state, only its batch size is used
    sig, sig_next = _grid_pair(sigma, sigma_next, anchor)  # [S, 1] each
    if sampler == "ode":
        return torch.zeros(n)
    _check_noise_level(sampler, noise_level)
    if sampler == "sde":
        dt = sig_next - sig  # [S, 1]
        std = _sde_std(sig, sigma_guard, noise_level) * torch.sqrt(-dt)  # [S, 1]
    elif sampler == "dance":
        std = _dance_std(sig, sig_next, noise_level)  # [S, 1]
    else:
        std = _cps_std(sig_next, noise_level)  # [S, 1]
    return std.reshape(n)  # [S]


def sampler_step(
    sampler: str,
    sample: Tensor,
    velocity: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    *,
    noise_level: float,
    sigma_guard: Tensor | float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    exact_cps_logprob: bool = True,
) -> StepOut:
    """One step of `sampler`, drawn (`noise`) or recomputed for a stored transition (`prev_sample`).

    Args:
        sampler (`str`): one of `SAMPLERS`.
        sample (`torch.Tensor`): `[B, ...]` state `s_k` at `σ`, any float dtype.
        velocity (`torch.Tensor`): `[B, ...]` model velocity at `(s_k, σ)`, any float dtype.
        sigma (`torch.Tensor` or `float`): `[B]` or scalar noise level `σ`.
        sigma_next (`torch.Tensor` or `float`): `[B]` or scalar next noise level `σ' < σ`.
        noise_level (`float`): `a` (≥ 0; ≤ 1 for `cps`), `η` for `dance`. Ignored by `ode`.
        sigma_guard (`torch.Tensor` or `float`): `σ_1` of the grid, in (0, 1); the `sde` std uses
            it in place of `σ` where `σ = 1` (any `σ > σ_1`, i.e. the first grid level, which is 1
            only up to float32 rounding for some shifts). Ignored by `ode` and `cps`.
        noise (`torch.Tensor`, *optional*): `[B, ...]` standard normal draw; required to draw a
            stochastic step, not allowed for `ode` or with `prev_sample`.
        prev_sample (`torch.Tensor`, *optional*): `[B, ...]` stored next state; then the step is
            not drawn, `next = prev_sample` and `log_prob` is that of the stored transition.
        exact_cps_logprob (`bool`, defaults to `True`): `False` gives the reference code's `cps`
            log-prob (see `reference_cps_log_prob`). Ignored by `ode` and `sde`.

    Returns:
        `StepOut`: float32 `next`, `mean`, `std` and `log_prob` (gradients flow through `mean`
        into `log_prob`; `next` enters `log_prob` detached).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    _check_state(sample, "sample")
    _check_like(velocity, sample, "velocity")
    _check_like(noise, sample, "noise")
    _check_like(prev_sample, sample, "prev_sample")
    batch = sample.shape[0]
    # float32: a bf16 state cannot resolve the change one step makes (see module docstring).
    sample, velocity = sample.float(), velocity.float()  # [B, ...]
    sig, sig_next = _grid_pair(sigma, sigma_next, sample)  # [B, 1, ...]

    if sampler == "ode":
        if noise is not None or prev_sample is not None:
            raise ValueError("the ode sampler is deterministic: pass neither noise nor prev_sample")
        next_ode = _euler(sample, velocity, sig, sig_next)  # [B, ...]
        return StepOut(next=next_ode, mean=next_ode, std=sample.new_zeros(batch), log_prob=None)

    _check_noise_level(sampler, noise_level)
    if (noise is None) == (prev_sample is None):
        raise ValueError(
            f"the {sampler} sampler needs exactly one of noise (draw a step) "
            "or prev_sample (recompute a stored transition)"
        )

    x1_hat = sample + (1 - sig) * velocity  # [B, ...] predicted noise x̂1
    if sampler == "sde":
        std_dev = _sde_std(sig, sigma_guard, noise_level)  # [B, 1, ...]
        dt = sig_next - sig  # [B, 1, ...]
        # s + [v + std²/(2σ)·x̂1]·dt; with std = 0 this is bit-for-bit the Euler step.
        mean = sample + dt * (velocity + std_dev**2 / (2 * sig) * x1_hat)  # [B, ...]
        step_std = std_dev * torch.sqrt(-dt)  # [B, 1, ...]
    elif sampler == "dance":
        # DanceGRPO's `flux_step` with `sde_solver=True`: x̂0 = s − σ·v,
        # score = −(s − (1 − σ)·x̂0)/σ², mean = s + dt·v − ½·η²·score·dt, std = η·sqrt(σ − σ').
        dt = sig_next - sig  # [B, 1, ...]
        x0_hat = sample - sig * velocity  # [B, ...] predicted clean sample
        score = -(sample - (1 - sig) * x0_hat) / sig**2  # [B, ...]; σ > σ' ≥ 0, so σ > 0
        # the Euler step plus a correction: η = 0 adds exactly 0 and reproduces the Euler step
        mean = _euler(sample, velocity, sig, sig_next) - (0.5 * noise_level**2) * score * dt  # [B, ...]
        step_std = _dance_std(sig, sig_next, noise_level)  # [B, 1, ...]
    else:
        step_std = _cps_std(sig_next, noise_level)  # [B, 1, ...]
        # (1 − σ')·x̂0 + sqrt(σ'² − std²)·x̂1 written as the Euler step plus a correction, so that
        # std = 0 reproduces the Euler step exactly (sqrt(fl(σ'²)) == σ' in IEEE arithmetic).
        correction = torch.sqrt(sig_next**2 - step_std**2) - sig_next  # [B, 1, ...]
        mean = _euler(sample, velocity, sig, sig_next) + correction * x1_hat  # [B, ...]

    std_flat = step_std.reshape(batch)  # [B]
    zero = std_flat == 0  # [B]
    n_zero = int(zero.sum())
    if noise is not None:
        if 0 < n_zero < batch:
            raise ValueError(
                f"{n_zero} of {batch} samples have zero step std (cps at σ' = 0): a batch must be all "
                "stochastic or all deterministic"
            )
        next_state = mean + step_std * noise.float()  # [B, ...]
        if n_zero == batch:
            return StepOut(next=next_state, mean=mean, std=std_flat, log_prob=None)
    elif prev_sample is not None:
        if n_zero:
            raise ValueError(
                f"{n_zero} of {batch} samples have zero step std (noise level 0, or cps at σ' = 0): "
                "a stored transition of a deterministic step has no log-prob to recompute"
            )
        next_state = prev_sample.float()  # [B, ...]

    if sampler == "cps" and not exact_cps_logprob:
        log_prob = reference_cps_log_prob(next_state.detach(), mean)  # [B]
    else:
        log_prob = transition_log_prob(next_state.detach(), mean, std_flat)  # [B]
    return StepOut(next=next_state, mean=mean, std=std_flat, log_prob=log_prob)
