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

from tpgrpo.algorithm.samplers import SAMPLERS, step_std

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


STEP_STD_FLOOR = 0.05
"""SPEC §2's near-deterministic floor: every trained step must have a step std of at least this.

The exact log-prob's gradient scales like `1/stepstd`, so one near-deterministic step in the window
takes nearly all of every update while its noise cannot change the image (on SD3's shift-3 grid at
T = 10 with `cps`, a = 0.7, step 8 has std 0.008 and carried 99.8 % of the squared gradient)."""


def grid_step_stds(sigmas: torch.Tensor, sampler: str, noise_level: float) -> torch.Tensor:
    """The step std of every step of a grid under `sampler` (`samplers.step_std`).

    Args:
        sigmas (`torch.Tensor`): `[T + 1]` grid, `σ_0 = 1 > … > σ_T = 0`, with T ≥ 2.
        sampler (`str`): `"sde"`, `"cps"` or `"dance"`.
        noise_level (`float`): `a`.

    Returns:
        `torch.Tensor`: float32 `[T]`; entry `k` is the std of step `k` (`σ_k → σ_{k+1}`).
    """
    if sigmas.ndim != 1 or sigmas.shape[0] < 3:
        raise ValueError(f"sigmas must be a 1-D grid [T + 1] with T >= 2, got shape {tuple(sigmas.shape)}")
    grid = sigmas.detach().to("cpu", torch.float32)  # [T+1]
    return step_std(sampler, grid[:-1], grid[1:], noise_level=noise_level, sigma_guard=float(grid[1]))


def _floor_size(stds: torch.Tensor, start: int) -> int:
    """How many consecutive steps from `start` reach the floor (the last step never counts)."""
    size = 0
    for k in range(start, stds.shape[0] - 1):  # k ≤ T − 2: the last step (σ' = 0) is never trained
        if float(stds[k]) < STEP_STD_FLOOR:
            break
        size += 1
    return size


def _describe(sigmas: torch.Tensor, stds: torch.Tensor, k: int, sampler: str) -> str:
    sig, sig_next, std = float(sigmas[k]), float(sigmas[k + 1]), float(stds[k])
    return f"step {k} (σ {sig:.4f} → {sig_next:.4f}, {sampler} step std {std:.4f})"


def _noise_level_hint(sigmas: torch.Tensor, stds: torch.Tensor, k: int, sampler: str, a: float) -> str:
    """The smallest noise level at which step `k` reaches the floor, as advice (or why none does)."""
    if sampler == "cps":  # std = σ'·sin(a·π/2)
        ratio = STEP_STD_FLOOR / float(sigmas[k + 1])
        if ratio > 1:
            return f"no noise level lifts step {k} to the floor (σ' = {float(sigmas[k + 1]):.4f})"
        return f"sampling.noise_level ≥ {2 / math.pi * math.asin(ratio):.3f} lifts step {k} to the floor"
    if float(stds[k]) == 0:  # sde or dance with a = 0
        return "set sampling.noise_level > 0"
    needed = a * STEP_STD_FLOOR / float(stds[k])  # sde and dance: std ∝ a
    if needed > 1:
        return f"no noise level up to 1 lifts step {k} to the floor (it would take {needed:.3f})"
    return f"sampling.noise_level ≥ {needed:.3f} lifts step {k} to the floor"


def window_problems(
    sigmas: torch.Tensor, sampler: str, noise_level: float, start: int, size: int | None
) -> list[str]:
    """What is wrong with a window on this grid under SPEC §2's rule (empty: it is fine).

    With `size` None the window is the default one (see `resolve_window`), a problem only when no
    step qualifies. An explicit window must fit the grid, leave out the last step and have every
    step at or above `STEP_STD_FLOOR`. Each problem names the step, its std, and the fix.

    Args:
        sigmas (`torch.Tensor`): `[T + 1]` grid.
        sampler (`str`): `"sde"`, `"cps"` or `"dance"`.
        noise_level (`float`): `a`.
        start (`int`): `w0`.
        size (`int` or `None`): `W`, or None for the default.
    """
    t = int(sigmas.shape[0]) - 1
    if start > t - 2:
        return [
            f"sampling.window_start={start} leaves no trainable step: the last step {t - 1} (σ' = 0) is "
            f"never trained; use window_start ≤ {t - 2}"
        ]
    stds = grid_step_stds(sigmas, sampler, noise_level)  # [T]
    default = _floor_size(stds, start)
    if size is None:
        if default > 0:
            return []
        return [
            f"no step qualifies for the default window: {_describe(sigmas, stds, start, sampler)} is under "
            f"the near-deterministic floor {STEP_STD_FLOOR} (SPEC §2) with noise_level {noise_level}; "
            f"{_noise_level_hint(sigmas, stds, start, sampler, noise_level)}"
            + (", or lower sampling.window_start" if start > 0 else "")
        ]
    end = start + size
    if end > t:
        return [f"sampling: window [{start}, {end}) runs past the {t} steps of the grid"]
    bad = [k for k in range(start, end) if k == t - 1 or float(stds[k]) < STEP_STD_FLOOR]
    if not bad:
        return []
    if default > 0:
        fix = (
            f"set sampling.window_size to null (the default window, W = {default} here) "
            f"or to at most {default}"
        )
    else:
        fix = (
            f"no window starting at step {start} qualifies: "
            f"{_noise_level_hint(sigmas, stds, start, sampler, noise_level)}, or lower sampling.window_start"
        )
    out = []
    for k in bad:
        if float(stds[k]) < STEP_STD_FLOOR:
            why = f"under the near-deterministic floor {STEP_STD_FLOOR} (SPEC §2)"
        else:
            why = "the last step (σ' = 0), which is never trained"
        out.append(
            f"sampling window [{start}, {end}) contains {_describe(sigmas, stds, k, sampler)}, {why}; {fix}"
        )
    return out


def resolve_window(
    sigmas: torch.Tensor, sampler: str, noise_level: float, start: int = 0, size: int | None = None
) -> Window:
    """The SDE window of SPEC §2 on this grid: explicit, or the default when `size` is None.

    The default is `[start, start + W)` with `W` the longest run of steps from `start` whose every
    step std (`grid_step_stds`) is at least `STEP_STD_FLOOR`; the last step (σ' = 0) is never in
    it. On SD3's shift-3 grid at T = 10 with `cps`, a = 0.7 that is `W = 8`; on a uniform grid
    (`σ_9 = 0.1`) it is `W = 9`.

    Raises:
        ValueError: `window_problems` found problems (the message lists them, `; `-separated).
    """
    problems = window_problems(sigmas, sampler, noise_level, start, size)
    if problems:
        raise ValueError("; ".join(problems))
    if size is None:
        size = _floor_size(grid_step_stds(sigmas, sampler, noise_level), start)
    return Window(start, size)
