"""Tests of the flow-matching grid and the SDE window."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from tpgrpo.algorithm import Window, default_window, flow_match_sigmas, timesteps_of


@pytest.mark.parametrize("shift", [1.0, 1.18, 1.32, 3.0, 3.1])
@pytest.mark.parametrize("num_steps", [1, 2, 10, 28, 40])
def test_sigmas_equal_diffusers(num_steps: int, shift: float) -> None:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    sigmas = flow_match_sigmas(num_steps, shift)
    assert sigmas.dtype == torch.float32
    assert torch.equal(sigmas, scheduler.sigmas)
    assert torch.equal(timesteps_of(sigmas), scheduler.timesteps)


def test_sigmas_shape_and_ends() -> None:
    sigmas = flow_match_sigmas(10)
    # T = 10 -> 11 values, σ_0 = 3·1/(1 + 2·1) = 1, σ_T = 0, strictly decreasing.
    assert sigmas.shape == (11,)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    # σ_1 for shift 3: the timestep grid runs linearly from 1000 to 1000·σ_min, with
    # σ_min = 3·0.001/(1 + 2·0.001) ≈ 0.0029940; t_1 = 1000 − (1000 − 2.9940)/9 ≈ 889.223,
    # σ_1 = 3·0.889223/(1 + 2·0.889223) ≈ 0.960129.
    assert sigmas[1].item() == pytest.approx(0.960129, abs=1e-6)
    assert timesteps_of(sigmas)[0].item() == 1000.0


@pytest.mark.parametrize(
    ("num_steps", "shift"), [(0, 3.0), (2.5, 3.0), (True, 3.0), (10, 0.0), (10, float("nan"))]
)
def test_sigmas_bad_input(num_steps: int, shift: float) -> None:
    with pytest.raises(ValueError, match=r"num_steps|shift"):
        flow_match_sigmas(num_steps, shift)


def test_timesteps_of_bad_shape() -> None:
    with pytest.raises(ValueError, match="1-D grid"):
        timesteps_of(torch.ones(2, 3))


def test_window_ranges() -> None:
    window = Window(2, 3)
    # trained steps k = 2, 3, 4; boundary states s_2 … s_5 (W + 1 = 4 of them).
    assert list(window.steps) == [2, 3, 4]
    assert list(window.boundaries) == [2, 3, 4, 5]
    assert window.sampler_for(1, "cps") == "ode"
    assert window.sampler_for(2, "cps") == "cps"
    assert window.sampler_for(5, "cps") == "ode"


def test_default_window() -> None:
    assert default_window(10) == Window(0, 9)
    default_window(10).validate(10, "cps")
    default_window(10).validate(10, "sde")
    with pytest.raises(ValueError, match="num_steps >= 2"):
        default_window(1)


def test_window_validate_bounds() -> None:
    Window(0, 10).validate(10, "sde")  # sde: the step into σ_T = 0 still has step std > 0
    with pytest.raises(ValueError, match="outside the grid"):
        Window(5, 6).validate(10, "sde")
    with pytest.raises(ValueError, match="σ' = 0"):
        Window(0, 10).validate(10, "cps")
    Window(8, 1).validate(10, "cps")  # step 8 goes to σ_9 > 0
    with pytest.raises(ValueError, match=r"unknown sampler 'ddim'.*ode, sde, cps"):
        Window(0, 1).validate(10, "ddim")


@pytest.mark.parametrize(("start", "size", "match"), [(-1, 2, "start"), (0, 0, "size"), (0, 1.5, "size")])
def test_window_bad_fields(start: int, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Window(start, size)
