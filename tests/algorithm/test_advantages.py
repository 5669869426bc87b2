"""Tests of group-normalised advantages (SPEC.md §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tpgrpo.algorithm import AnnotationConfig, advantages, annotate, zero_advantage_mask, zero_std_groups

EPS = 1e-4


def test_group_hand_values() -> None:
    # One group, one step, rewards 1, 2, 3: mean 2, population std sqrt(2/3) = 0.8164966,
    # A = (x − 2)/(0.8164966 + 1e-4) = −1.2245946, 0, +1.2245946.
    adv = advantages(np.array([[1.0], [2.0], [3.0]]), np.array([0, 0, 0]))
    a = 1 / (math.sqrt(2 / 3) + EPS)
    assert adv[:, 0].tolist() == pytest.approx([-a, 0.0, a])
    assert a == pytest.approx(1.2245946, abs=1e-6)


def test_per_step_and_per_group() -> None:
    # Groups {rows 0, 1} and {rows 2, 3}, two steps each normalised on its own.
    # step 0: group 0 [0, 2] -> mean 1, std 1 -> ∓1/(1 + 1e-4); group 1 [10, 14] -> mean 12, std 2
    #         -> ∓2/(2 + 1e-4). step 1: all equal within each group -> exactly 0.
    rewards = np.array([[0.0, 5.0], [2.0, 5.0], [10.0, 7.0], [14.0, 7.0]])
    adv = advantages(rewards, np.array([0, 0, 1, 1]))
    assert adv[:, 0].tolist() == pytest.approx([-1 / 1.0001, 1 / 1.0001, -2 / 2.0001, 2 / 2.0001])
    assert adv[:, 1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_batch_std() -> None:
    # Same step 0 with std over the whole batch: values [0, 2, 10, 14], mean 6.5, squared deviations
    # 42.25 + 20.25 + 12.25 + 56.25 = 131 -> std sqrt(131/4) = 5.7227616; means stay per group.
    rewards = np.array([[0.0], [2.0], [10.0], [14.0]])
    adv = advantages(rewards, np.array([0, 0, 1, 1]), std_scope="batch")
    s = math.sqrt(131 / 4) + EPS
    assert adv[:, 0].tolist() == pytest.approx([-1 / s, 1 / s, -2 / s, 2 / s])


def test_clipping() -> None:
    # 50 trajectories, one scores 1, the rest 0: mean 0.02, std sqrt(0.02·0.98) = 0.14,
    # outlier A = 0.98/0.1401 = 6.995 -> clipped to 5; others −0.02/0.1401 = −0.142755.
    rewards = np.zeros((50, 1))
    rewards[0] = 1.0
    adv = advantages(rewards, np.zeros(50, dtype=int))
    assert adv[0, 0] == 5.0
    assert adv[1:, 0] == pytest.approx(np.full(49, -0.02 / 0.1401))
    assert advantages(rewards, np.zeros(50, dtype=int), clip=10.0)[0, 0] == pytest.approx(0.98 / 0.1401)


def test_constant_group_is_exactly_zero() -> None:
    # A float mean of [0.1, 0.1, 0.1] is 0.10000000000000002, which would leave ~1e-13 advantages.
    rewards = np.array([[0.1, 0.3], [0.1, 0.3], [0.1, 0.3], [0.0, 1.0], [1.0, 0.0]])
    adv = advantages(rewards, np.array([0, 0, 0, 1, 1]))
    assert (adv[:3] == 0).all()
    assert zero_advantage_mask(adv).tolist() == [True, True, True, False, False]


def test_flow_grpo_advantage_equal_on_every_step() -> None:
    rho = np.array([[0.0, 0.5, 1.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.5], [0.2, 0.4, 0.6]])
    ann = annotate(rho, np.zeros(4, dtype=int), AnnotationConfig("flow_grpo"))
    adv = advantages(ann.step_reward, np.array([0, 0, 1, 1]))
    assert (adv == adv[:, :1]).all()
    # group 0: ρ_W = 1, 0 -> mean 0.5, std 0.5 -> ±0.5/(0.5 + 1e-4);
    # group 1: ρ_W = 0.5, 0.6 -> mean 0.55, std 0.05 -> ∓0.05/(0.05 + 1e-4)
    assert adv[:, 0].tolist() == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, -0.05 / 0.0501, 0.05 / 0.0501])


@settings(max_examples=100, deadline=None)
@given(
    rewards=hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 8), st.integers(1, 4)),
        elements=st.floats(-1e3, 1e3, allow_nan=False),
    ),
    std_scope=st.sampled_from(["group", "batch"]),
)
def test_advantage_properties(rewards: np.ndarray, std_scope: str) -> None:
    n = rewards.shape[0]
    groups = np.arange(n) // 2
    if n % 2:
        groups[-1] = groups[-2]  # no singleton group
    adv = advantages(rewards, groups, std_scope=std_scope, clip=1e9)  # type: ignore[arg-type]
    assert np.isfinite(adv).all()
    for g in np.unique(groups):
        assert np.allclose(adv[groups == g].mean(axis=0), 0.0, atol=1e-9)
    # shifting a group's rewards by a constant changes nothing (group std)
    if std_scope == "group":
        shifted = rewards + 7.0 * groups[:, None]
        assert np.allclose(advantages(shifted, groups, clip=1e9), adv, atol=1e-6)
    assert (np.abs(advantages(rewards, groups, std_scope=std_scope)) <= 5.0).all()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rewards", "groups", "kwargs", "match"),
    [
        (np.zeros(4), np.zeros(4, dtype=int), {}, r"step_reward must have shape \[N, W\]"),
        (np.zeros((4, 2)), np.zeros(3, dtype=int), {}, r"group_id must have shape \[N\] = \[4\]"),
        (np.zeros((4, 2)), np.zeros(4), {}, "group_id must be integers"),
        (
            np.array([[0.0], [np.nan], [1.0], [2.0]]),
            np.array([0, 0, 1, 1]),
            {},
            r"NaN or infinite values in rows \[1\]",
        ),
        (np.array([[0.0], [np.inf]]), np.array([0, 0]), {}, r"rows \[1\]"),
        (np.zeros((3, 1)), np.array([0, 0, 1]), {}, r"groups \[1\] have a single trajectory"),
        (np.zeros((2, 1)), np.array([0, 0]), {"std_scope": "global"}, "unknown std_scope 'global'"),
        (np.zeros((2, 1)), np.array([0, 0]), {"clip": 0.0}, "clip must be"),
        (np.zeros((2, 1)), np.array([0, 0]), {"eps": -1.0}, "eps must be"),
    ],
)
def test_bad_input(rewards: np.ndarray, groups: np.ndarray, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        advantages(rewards, groups, **kwargs)  # type: ignore[arg-type]


def test_zero_advantage_mask_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        zero_advantage_mask(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"shape \[N, W\]"):
        zero_advantage_mask(np.zeros(3))


def test_zero_std_groups() -> None:
    # group 0: every step equal within the group (no signal); group 1: step 1 differs; group 2 (ids
    # need not be contiguous): equal at step 0 only, so it has signal
    rewards = np.array(
        [
            [0.5, 0.2],
            [0.5, 0.2],
            [0.1, 0.3],
            [0.1, 0.4],
            [0.7, 0.0],
            [0.7, 1.0],
        ]
    )
    groups = np.array([0, 0, 1, 1, 5, 5])
    assert zero_std_groups(rewards, groups).tolist() == [True, False, False]
    # and exactly these groups get all-zero advantages
    adv = advantages(rewards, groups)
    assert zero_advantage_mask(adv).tolist() == [True, True, False, False, False, False]
    with pytest.raises(ValueError, match="group_id"):
        zero_std_groups(rewards, groups[:3])
