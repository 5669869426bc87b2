"""Cheaper completion estimators (issue 18): parsing, coarse paths, x̂0, evaluation counts, and what
`prefix:K` does to increments and turning points — against hand-derived values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tpgrpo.algorithm import AnnotationConfig, annotate, detect_turning_points
from tpgrpo.algorithm.estimators import (
    Estimator,
    branch_evals,
    coarse_path,
    euler_to,
    parse_estimator,
    prefix_problems,
    prefix_rho,
    velocity_from_ode_state,
    x0_estimate,
)


@pytest.mark.parametrize(
    ("text", "steps", "expected", "label"),
    [
        ("exact", None, Estimator("exact"), "exact"),
        ("coarse", None, Estimator("coarse", steps=2), "coarse:2"),
        ("coarse", 3, Estimator("coarse", steps=3), "coarse:3"),
        ("x0", None, Estimator("x0", steps=1), "x0"),
        ("prefix:3", None, Estimator("prefix", prefix=3), "prefix:3"),
    ],
)
def test_parse(text: str, steps: int | None, expected: Estimator, label: str) -> None:
    est = parse_estimator(text, steps)
    assert est == expected and est.label == label


@pytest.mark.parametrize(
    ("text", "steps", "match"),
    [
        ("prefix:0", None, "K ≥ 1"),
        ("prefix:", None, "K ≥ 1"),
        ("prefix:-1", None, "K ≥ 1"),
        ("prefix:two", None, "K ≥ 1"),
        ("exakt", None, "unknown estimator"),
        ("coarse:2", None, "unknown estimator"),
        ("coarse", 0, "out of range"),
        ("coarse", 4, "out of range"),
    ],
)
def test_parse_errors(text: str, steps: int | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_estimator(text, steps)


def test_prefix_problems() -> None:
    assert prefix_problems("prefix:8", 8) == []
    assert prefix_problems("coarse", 1) == []
    (problem,) = prefix_problems("prefix:9", 8)
    assert "K ≤ W" in problem and "prefix:8 is exact" in problem


@pytest.mark.parametrize(
    ("start", "t", "steps", "path"),
    [
        (0, 10, 1, [0, 10]),
        (0, 10, 2, [0, 5, 10]),
        (0, 10, 3, [0, 3, 7, 10]),  # 10/3 = 3.33 → 3, 20/3 = 6.67 → 7
        (1, 10, 2, [1, 6, 10]),  # 9/2 = 4.5 rounds half up → 1 + 5
        (7, 10, 3, [7, 8, 9, 10]),  # 3 steps left: the exact completion
        (8, 10, 3, [8, 9, 10]),  # fewer left than asked: all of them
        (9, 10, 2, [9, 10]),
    ],
)
def test_coarse_path(start: int, t: int, steps: int, path: list[int]) -> None:
    assert coarse_path(start, t, steps) == path


def test_x0_on_a_known_velocity() -> None:
    """s = (1, 2), v = (0.5, −1), σ = 0.6: x̂0 = s − 0.6·v = (0.7, 2.6). The rollout stores the
    ODE-step state to σ' = 0.4, o = s − 0.2·v = (0.9, 2.2), from which v comes back."""
    s = torch.tensor([[1.0, 2.0]])
    v = torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(x0_estimate(s, v, 0.6), torch.tensor([[0.7, 2.6]]))
    o = torch.tensor([[0.9, 2.2]])
    torch.testing.assert_close(velocity_from_ode_state(s, o, 0.6, 0.4), v)
    # one Euler step to σ = 0 is x̂0: coarse with one step and x0 are the same arithmetic
    torch.testing.assert_close(euler_to(s, v, 0.6, 0.0), x0_estimate(s, v, 0.6))
    with pytest.raises(ValueError, match="σ' < σ"):
        velocity_from_ode_state(s, o, 0.4, 0.6)


def test_euler_per_sample_sigmas() -> None:
    """Rows at σ = 0.5 step to σ' = 0.25 and 0: s + (σ' − σ)·v = 1 − 0.25·2 = 0.5 and 1 − 0.5·2 = 0."""
    s, v = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0)
    out = euler_to(s, v, 0.5, torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.5, 0.0]))


def test_straight_paths_make_every_estimator_exact() -> None:
    """On a straight flow — the velocity field `v(x, σ) = (x − a)/σ` of paths aiming at one clean
    point `a` — an Euler step from σ to σ' lands at `a + (x − a)·σ'/σ`, still on the straight line,
    so x0, any coarse grid and the full grid all give `a` exactly. The estimators differ only by the
    curvature of the model's ODE paths."""
    a = torch.tensor([[0.3, -1.2, 2.0]])
    sigmas = torch.tensor([1.0, 0.96, 0.91, 0.86, 0.79, 0.71, 0.6, 0.465, 0.278, 0.0089, 0.0])
    s_k = a + 0.71 * torch.tensor([[1.0, 0.5, -0.25]])  # a state at σ_5 = 0.71 on a path to a

    def field(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - a) / sigma

    for steps in (1, 2, 3, 5):
        x = s_k
        path = coarse_path(5, 10, steps)
        for g, g_next in itertools.pairwise(path):
            x = euler_to(x, field(x, float(sigmas[g])), float(sigmas[g]), float(sigmas[g_next]))
        torch.testing.assert_close(x, a, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_estimate(s_k, field(s_k, 0.71), 0.71), a, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("text", "reuse", "by_boundary"),
    [
        # T = 10, W = 8, w0 = 0: boundary j at grid index k = j
        ("exact", True, [9, 8, 7, 6, 5, 4, 3, 2]),  # 44 a trajectory (SPEC §3 with reuse)
        ("exact", False, [10, 9, 8, 7, 6, 5, 4, 3]),
        ("coarse", True, [1] * 8),  # two Euler steps, the first from the rollout's velocity
        ("coarse", False, [2] * 8),
        ("x0", True, [0] * 8),
        ("x0", False, [1] * 8),
        ("prefix:3", True, [9, 8, 7, 0, 0, 0, 0, 0]),
    ],
)
def test_branch_evals(text: str, reuse: bool, by_boundary: list[int]) -> None:
    est = parse_estimator(text)
    assert [branch_evals(est, j, j, 10, reuse) for j in range(8)] == by_boundary


def test_coarse_three_steps_near_the_end_costs_what_is_left() -> None:
    """coarse:3 from k = 8 of T = 10 takes the 2 grid steps left: 1 evaluation with reuse."""
    assert branch_evals(parse_estimator("coarse", 3), 8, 8, 10, True) == 1


# --- prefix:K: what it does to increments and turning points -----------------------------------

RHO = np.array([[0.5, 0.2, 0.6, 0.3, 0.9]])  # W = 4; d = (−.3, .4, −.3, .6), Δ = .4


def test_prefix_rho_rows() -> None:
    torch.testing.assert_close(
        torch.from_numpy(prefix_rho(RHO, 2)), torch.tensor([[0.5, 0.2, 0.9, 0.9, 0.9]], dtype=torch.float64)
    )
    np.testing.assert_array_equal(prefix_rho(RHO, 4), RHO)  # prefix:W is exact
    with pytest.raises(ValueError, match="outside 1"):
        prefix_rho(RHO, 5)


def test_prefix_increments_vanish_after_k() -> None:
    """prefix:2: d_1 = ρ_W − ρ_1 = 0.7 takes the whole remaining change; d_2 = d_3 = 0."""
    ann = annotate(prefix_rho(RHO, 2), np.zeros(1, dtype=np.int64), AnnotationConfig("incremental"))
    np.testing.assert_allclose(ann.increment, [[-0.3, 0.7, 0.0, 0.0]])
    np.testing.assert_allclose(ann.trend, [0.4])  # Δ = ρ_W − ρ_0 is exact


def test_prefix_turning_points() -> None:
    """Exact: constrained turning point at j = 1 (d_0 < 0 < d_1, ρ_W − ρ_2 = .3 > 0), plain ones at
    j = 1 and 3. prefix:2 loses the constrained one (j = K − 1: ρ_W − ρ_K = 0) and keeps the plain
    one at j = 1 (its replacement r_agg_1 = d_1 changes nothing); prefix:3 keeps j = 1 (j ≤ K − 2:
    every quantity its test reads is exact). No turning point at j ≥ K: d_j = 0 there."""

    def tps(rho: np.ndarray, constrained: bool) -> list[int]:
        mask = detect_turning_points(rho, constrained=constrained, initial_step=True)
        return np.flatnonzero(mask[0]).tolist()

    assert tps(RHO, True) == [1] and tps(RHO, False) == [1, 3]
    assert tps(prefix_rho(RHO, 2), True) == [] and tps(prefix_rho(RHO, 2), False) == [1]
    assert tps(prefix_rho(RHO, 3), True) == [1] and tps(prefix_rho(RHO, 3), False) == [1]
    ann = annotate(prefix_rho(RHO, 2), np.zeros(1, dtype=np.int64), AnnotationConfig("tp"))
    np.testing.assert_allclose(ann.step_reward, ann.increment)  # the plain one is a no-op
