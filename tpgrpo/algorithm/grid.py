"""The flow-matching noise grid and the SDE window (SPEC.md §1, §2).

The grid is the one of diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` after
`set_timesteps(T)`: `1 = σ_0 > σ_1 > … > σ_T = 0`, float32. It is rebuilt here, operation for
operation, so that this package never imports diffusers; a test checks the equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tpgrpo.algorithm.samplers import SAMPLERS

NUM_TRAIN_TIMESTEPS = 1000


def flow_match_sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """The noise levels of a `num_steps`-step flow-matching grid.

    Args:
        num_steps (`int`): number of sampling steps `T` (≥ 1).
        shift (`float`, defaults to 3.0): the scheduler's static timestep shift (> 0).

    Returns:
        `torch.Tensor`: float32 `[T + 1]`, `σ_0 = 1 > … > σ_T = 0`, equal to diffusers'
        `FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(T)` `.sigmas`.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    # The scheduler's training grid, in float32 torch as diffusers builds it; only its two ends
    # (sigma_max, sigma_min) enter the inference grid.
    train = np.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1].copy()
    train_sigmas = torch.from_numpy(train) / NUM_TRAIN_TIMESTEPS  # [1000] float32
    train_sigmas = shift * train_sigmas / (1 + (shift - 1) * train_sigmas)  # [1000] float32
    sigma_max, sigma_min = train_sigmas[0].item(), train_sigmas[-1].item()
    # The inference grid: evenly spaced timesteps in float64, shifted, then cast to float32.
    timesteps = np.linspace(sigma_max * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, num_steps)
    sigmas = timesteps / NUM_TRAIN_TIMESTEPS  # [T] float64
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)  # [T] float64
    return torch.cat([torch.from_numpy(sigmas).to(torch.float32), torch.zeros(1)])  # [T + 1]


def timesteps_of(sigmas: torch.Tensor) -> torch.Tensor:
    """The transformer timesteps of a grid: `1000·σ_k` for `k = 0 … T-1`.

    Args:
        sigmas (`torch.Tensor`): `[T + 1]` grid from `flow_match_sigmas`.

    Returns:
        `torch.Tensor`: `[T]`, same dtype as `sigmas`.
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D grid [T + 1] with T >= 1, got shape {tuple(sigmas.shape)}")
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS  # [T]


@dataclass(frozen=True)
class Window:
    """The SDE window: grid steps `k ∈ [start, start + size)` are stochastic and trained.

    Args:
        start (`int`): first stochastic grid step `w0` (≥ 0).
        size (`int`): number of stochastic steps `W` (≥ 1).
    """

    start: int
    size: int

    def __post_init__(self) -> None:
        for name in ("start", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Window.{name} must be an int, got {value!r}")
        if self.start < 0:
            raise ValueError(f"Window.start must be >= 0, got {self.start}")
        if self.size < 1:
            raise ValueError(f"Window.size must be >= 1 (a window needs a trained step), got {self.size}")

    @property
    def steps(self) -> range:
        """Grid steps `k` of the window (trained steps `j = k - start`)."""
        return range(self.start, self.start + self.size)

    @property
    def boundaries(self) -> range:
        """Grid indices of the `W + 1` boundary states `s_{w0} … s_{w0+W}` (rewards `ρ_0 … ρ_W`)."""
        return range(self.start, self.start + self.size + 1)

    def sampler_for(self, step: int, sampler: str) -> str:
        """The sampler of grid step `step`: `sampler` inside the window, `"ode"` outside."""
        return sampler if step in self.steps else "ode"

    def validate(self, num_steps: int, sampler: str) -> None:
        """Raise `ValueError` if the window does not fit a `num_steps` grid for `sampler`.

        Args:
            num_steps (`int`): grid size `T`.
            sampler (`str`): one of `samplers.SAMPLERS`. For `cps` the last grid step (`σ' = 0`)
                has zero std, hence no density, and cannot be in the window.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
        end = self.start + self.size
        if end > num_steps:
            raise ValueError(
                f"window [{self.start}, {end}) lies outside the grid of {num_steps} steps; "
                f"need start + size <= {num_steps}"
            )
        if sampler == "cps" and end > num_steps - 1:
            raise ValueError(
                f"window [{self.start}, {end}) includes the last grid step {num_steps - 1}, where σ' = 0 "
                f"gives the cps sampler zero std and no log-prob; need start + size <= {num_steps - 1}"
            )


def default_window(num_steps: int) -> Window:
    """The reference window `Window(0, T - 1)`: every step but the last, near-deterministic one."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"the default window needs num_steps >= 2, got {num_steps!r}")
    return Window(0, num_steps - 1)
