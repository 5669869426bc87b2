"""Tests of the flow-matching grid and the SDE window (SPEC §2's near-deterministic floor)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from tpgrpo.algorithm import (
    STEP_STD_FLOOR,
    Window,
    flow_match_sigmas,
    grid_step_stds,
    resolve_window,
    sampler_step,
    timesteps_of,
    window_problems,
)

SIN = math.sin(0.7 * math.pi / 2)  # cps at a = 0.7: std = σ'·sin(0.35π) = 0.8910·σ'
UNIFORM = torch.linspace(1, 0, 11)  # σ_k = 1 − k/10: σ_9 = 0.1


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


def test_floor_is_spec_value() -> None:
    assert STEP_STD_FLOOR == 0.05


def test_sd3_shift3_grid_cps_window_is_8() -> None:
    """SPEC §2: on SD3's shift-3 grid at T = 10 with cps, a = 0.7, the default window is W = 8."""
    sigmas = flow_match_sigmas(10, 3.0)
    # grid 1, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0
    stds = grid_step_stds(sigmas, "cps", 0.7)
    # std_k = 0.8910·σ_{k+1}: step 7 → .8910·.2780 = .2477 (above 0.05), step 8 → .8910·.0089 = .0080
    # (under the floor), step 9 → σ' = 0, so 0
    assert stds.shape == (10,)
    assert float(stds[0]) == pytest.approx(SIN * 0.9601, abs=1e-4)  # .8555
    assert float(stds[7]) == pytest.approx(0.2477, abs=1e-4)
    assert float(stds[8]) == pytest.approx(0.0080, abs=1e-4)
    assert float(stds[9]) == 0.0
    assert resolve_window(sigmas, "cps", 0.7) == Window(0, 8)


def test_uniform_grid_cps_window_is_9() -> None:
    # std_8 = .8910·σ_9 = .8910·0.1 = .0891 ≥ 0.05: every step but the last (σ' = 0) is trained
    stds = grid_step_stds(UNIFORM, "cps", 0.7)
    assert float(stds[8]) == pytest.approx(0.0891, abs=1e-4)
    assert resolve_window(UNIFORM, "cps", 0.7) == Window(0, 9)


def test_sde_window_uses_the_step_std() -> None:
    """sde: stepstd = a·sqrt(σ/(1 − σ̃))·sqrt(σ − σ'), with σ̃ = σ_1 at σ = 1."""
    sigmas = flow_match_sigmas(10, 3.0)
    stds = grid_step_stds(sigmas, "sde", 0.7)
    # step 0: σ = 1 → σ̃ = σ_1, so stepstd = a·sqrt(1/(1 − σ_1))·sqrt(1 − σ_1) = a = 0.7 exactly
    assert float(stds[0]) == pytest.approx(0.7, abs=1e-6)
    # step 8: .7·sqrt(.2780/.7220)·sqrt(.2780 − .0089) = .7·.6205·.5188 = .2254 ≥ 0.05
    assert float(stds[8]) == pytest.approx(0.2254, abs=1e-3)
    # step 9 (the last): .7·sqrt(.0089/.9911)·sqrt(.0089) = .0063 < 0.05, and never trained anyway
    assert float(stds[9]) == pytest.approx(0.0063, abs=1e-3)
    assert resolve_window(sigmas, "sde", 0.7) == Window(0, 9)
    # on the uniform grid the last step has stepstd .7·sqrt(.1/.9)·sqrt(.1) = .0738 ≥ 0.05, yet the
    # last step (σ' = 0) is never trained
    assert float(grid_step_stds(UNIFORM, "sde", 0.7)[9]) == pytest.approx(0.0738, abs=1e-3)
    assert resolve_window(UNIFORM, "sde", 0.7) == Window(0, 9)


def test_dance_window_uses_the_step_std() -> None:
    """dance: stepstd = η·sqrt(σ − σ'); the floor rule applies to it as to sde and cps."""
    sigmas = flow_match_sigmas(10, 3.0)  # 1, .9601, .9133, …, .4649, .2780, .0089, 0
    stds = grid_step_stds(sigmas, "dance", 0.3)
    # step 0: .3·sqrt(1 − .9601) = .3·.1998 = .0599 ≥ 0.05; step 8: .3·sqrt(.2780 − .0089) = .1556
    assert float(stds[0]) == pytest.approx(0.0599, abs=1e-4)
    assert float(stds[8]) == pytest.approx(0.1556, abs=1e-4)
    # step 9 (σ' = 0): .3·sqrt(.0089) = .0283, never trained anyway: W = 9
    assert float(stds[9]) == pytest.approx(0.0283, abs=1e-4)
    assert resolve_window(sigmas, "dance", 0.3) == Window(0, 9)
    # T = 16: step 0 is 1 → .9768, std .3·sqrt(.0232) = .0457 < 0.05; std ∝ η, so η ≥ .3·.05/.0457
    problems = window_problems(flow_match_sigmas(16, 3.0), "dance", 0.3, 0, None)
    assert len(problems) == 1 and "dance step std 0.0457" in problems[0]
    assert "noise_level ≥ 0.328" in problems[0]
    # a step no noise level ≤ 1 can lift: at T = 1000 step 0 is so short (σ − σ' < 0.0025) that
    # std = η·sqrt(σ − σ') < 0.05 for every η ≤ 1
    problems = window_problems(flow_match_sigmas(1000, 3.0), "dance", 0.3, 0, None)
    assert len(problems) == 1 and "no noise level up to 1" in problems[0]


@pytest.mark.parametrize("sampler", ["sde", "cps", "dance"])
def test_grid_step_stds_equal_the_sampler_steps(sampler: str) -> None:
    """The window rule reads the same std the samplers draw with (`StepOut.std`), step by step."""
    sigmas = flow_match_sigmas(10, 3.0)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    stds = grid_step_stds(sigmas, sampler, 0.7)
    for k in range(9):
        out = sampler_step(
            sampler,
            x,
            x,
            float(sigmas[k]),
            float(sigmas[k + 1]),
            noise_level=0.7,
            sigma_guard=float(sigmas[1]),
            noise=torch.zeros_like(x),
        )
        assert torch.equal(out.std, stds[k : k + 1])


def test_default_window_from_a_later_start() -> None:
    sigmas = flow_match_sigmas(10, 3.0)
    assert resolve_window(sigmas, "cps", 0.7, start=3) == Window(3, 5)  # steps 3 … 7
    assert resolve_window(sigmas, "cps", 0.7, start=2, size=4) == Window(2, 4)  # explicit, all fine


def test_explicit_window_under_the_floor_names_step_and_std() -> None:
    sigmas = flow_match_sigmas(10, 3.0)
    problems = window_problems(sigmas, "cps", 0.7, 0, 9)
    assert len(problems) == 1
    assert "step 8" in problems[0] and "std 0.0080" in problems[0] and "floor 0.05" in problems[0]
    assert "window_size to null" in problems[0] and "W = 8" in problems[0]  # the fix
    with pytest.raises(ValueError, match=r"step 8 .*std 0\.0080"):
        resolve_window(sigmas, "cps", 0.7, 0, 9)


def test_explicit_window_with_the_last_step_is_refused() -> None:
    # uniform grid, sde: step 9 has stepstd .0738 (above the floor) but σ' = 0: never trained
    problems = window_problems(UNIFORM, "sde", 0.7, 0, 10)
    assert len(problems) == 1 and "step 9" in problems[0] and "never trained" in problems[0]


def test_no_step_qualifies() -> None:
    sigmas = flow_match_sigmas(10, 3.0)
    # a = 0.01: std_0 = .9601·sin(.005π) = .0151 < 0.05; sin(a·π/2) ≥ .05/.9601 needs a ≥ .0332
    problems = window_problems(sigmas, "cps", 0.01, 0, None)
    assert len(problems) == 1
    assert "no step qualifies" in problems[0] and "step 0" in problems[0] and "0.0151" in problems[0]
    assert "noise_level ≥ 0.033" in problems[0]
    # T = 2 on the shift-3 grid: 1, .0089, 0 — step 0 ends at σ' = .0089, no noise level can help
    problems = window_problems(flow_match_sigmas(2, 3.0), "cps", 0.7, 0, None)
    assert len(problems) == 1 and "no noise level" in problems[0]
    # a start that leaves only the last step
    assert "leaves no trainable step" in window_problems(sigmas, "cps", 0.7, 9, None)[0]
    with pytest.raises(ValueError, match="no step qualifies"):
        resolve_window(sigmas, "cps", 0.01)


def test_noise_level_zero_has_no_window() -> None:
    problems = window_problems(UNIFORM, "sde", 0.0, 0, None)
    assert len(problems) == 1 and "std 0.0000" in problems[0] and "noise_level > 0" in problems[0]
    # sde at a = 0.01: stepstd_0 = a (σ = 1 guard), .01 < .05; std ∝ a, so a ≥ .01·.05/.01 = .05
    assert "noise_level ≥ 0.050" in window_problems(UNIFORM, "sde", 0.01, 0, None)[0]


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
