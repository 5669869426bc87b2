"""The sampling grid of a loaded pipeline: the σ values its own `__call__` would sample with.

SPEC §1: the grid is the diffusers scheduler's grid with the model's shift. How the shift is
chosen differs by family, so each policy's `sigmas(num_steps, height, width)` rebuilds the
scheduler call of its pipeline's `__call__` and hands the result to `scheduler_grid` here:

- SD3 / SD3.5 (`StableDiffusion3Pipeline`): `retrieve_timesteps(scheduler, T)`, the static
  `scheduler.config.shift`; a scheduler with `use_dynamic_shifting` gets `mu` from the latent patch
  count (`calculate_shift`, `max_shift` default 1.16 as in that pipeline).
- FLUX (`FluxPipeline`): `sigmas = linspace(1, 1/T, T)` (none with `use_flow_sigmas`) and
  `mu = calculate_shift(packed sequence length, base/max_image_seq_len, base/max_shift)` — dynamic,
  resolution-dependent shifting.

`scheduler_grid` runs the pipeline module's own `retrieve_timesteps` on a deep copy of the
pipeline's scheduler (its state, `set_shift` included, without touching the original), so the
values are those of `__call__` bit for bit, for any scheduler option (shift_terminal, Karras, …).
`check_grid` then enforces what the samplers assume of a grid (see its docstring).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

SIGMA0_TOLERANCE = 1e-6
"""|σ_0 − 1| allowed: a few float32 ulps (diffusers' static-shift grids start at 1 up to rounding)."""


def scheduler_grid(
    scheduler: Any,
    retrieve_timesteps: Callable[..., Any],
    num_steps: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The σ grid `retrieve_timesteps(copy_of(scheduler), num_steps, "cpu", **kwargs)` leaves.

    Args:
        scheduler: the pipeline's scheduler (deep-copied; the original keeps its state).
        retrieve_timesteps: the pipeline module's `retrieve_timesteps` (what its `__call__` runs).
        num_steps (`int`): `T`.
        **kwargs: what `__call__` passes besides the step count (`sigmas=`, `mu=`).

    Returns:
        `torch.Tensor`: float32 `[T + 1]` on the CPU, checked by `check_grid`.
    """
    check_num_steps(num_steps)
    fresh = copy.deepcopy(scheduler)
    retrieve_timesteps(fresh, num_steps, "cpu", **kwargs)
    return check_grid(fresh.sigmas, num_steps)


def check_num_steps(num_steps: int) -> int:
    """`num_steps` if it is an integer ≥ 1; raises `ValueError` otherwise."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return num_steps


def check_grid(sigmas: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Check a grid against what the samplers assume (SPEC §1–§2) and return it as float32 CPU.

    - `T + 1` values ending in `σ_T = 0` (the final latent is noise-free);
    - strictly decreasing (every step has `σ' < σ`, `dt < 0`);
    - `σ_0 = 1` (up to `SIGMA0_TOLERANCE`): `s_0` is pure Gaussian noise, as the pipelines draw it;
    - `σ_1 < 1`: the `sde` sampler replaces `σ = 1` by `σ_1` in `sqrt(σ / (1 − σ̃))` (its guard).

    FLUX's dynamically shifted grid satisfies all four: `linspace(1, 1/T, T)` starts at `t = 1`,
    which the exponential time shift `e^μ / (e^μ + (1/t − 1))` maps to exactly 1.0 whatever `μ`.

    Args:
        sigmas (`torch.Tensor`): `[T + 1]` noise levels.
        num_steps (`int`): `T`.

    Raises:
        ValueError: the grid breaks one of the assumptions; the message names it.
    """
    out = sigmas.detach().to("cpu", torch.float32).clone()  # [T + 1]
    if tuple(out.shape) != (num_steps + 1,):
        raise ValueError(f"the scheduler grid has shape {tuple(out.shape)}, expected ({num_steps + 1},)")
    if float(out[-1]) != 0.0:
        raise ValueError(f"the scheduler grid ends at σ_T = {float(out[-1])}, expected 0")
    if not bool((out[1:] < out[:-1]).all()):
        raise ValueError(
            "the scheduler grid is not strictly decreasing (an inverted-sigma scheduler?): "
            f"{[round(float(s), 6) for s in out]}"
        )
    if abs(float(out[0]) - 1.0) > SIGMA0_TOLERANCE:
        raise ValueError(
            f"the scheduler grid starts at σ_0 = {float(out[0])!r}, not 1: the samplers start from pure "
            "noise (s_0 at σ = 1); use a scheduler whose first sigma is 1"
        )
    if num_steps >= 2 and not float(out[1]) < 1.0:
        raise ValueError(
            f"σ_1 = {float(out[1])!r} is not below 1: the sde sampler's σ = 1 guard needs σ_1 < 1"
        )
    return out
