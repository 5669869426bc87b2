"""Tests of group-normalised advantages (SPEC.md §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tpgrpo.algorithm import (
    AnnotationConfig,
    advantages,
    aggregate_advantages,
    annotate,
    best_of_n_mask,
    zero_advantage_mask,
    zero_std_groups,
)

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


# ---------------------------------------------------------------- multi-reward aggregation, best-of-n


def test_aggregate_advantages_hand_values() -> None:
    # One group of 3, one step. Reward a: 1, 2, 3 (std sqrt(2/3)) -> A_a = ∓1.2245946, 0;
    # reward b: 0, 100, 0 (mean 33.3, std 47.1405) -> A_b = −0.7071052, +1.4142104, −0.7071052.
    # advantage aggregation with weights 1, 0.5: A_a + 0.5·A_b = −1.5781472, +0.7071052, +0.8710420.
    a = np.array([[1.0], [2.0], [3.0]])
    b = np.array([[0.0], [100.0], [0.0]])
    groups = np.array([0, 0, 0])
    adv = aggregate_advantages([a, b], [1.0, 0.5], groups)
    aa = 1 / (math.sqrt(2 / 3) + EPS)
    sb = math.sqrt(2 / 9) * 100 + EPS  # population std of 0, 100, 0
    ab = np.array([-100 / 3, 200 / 3, -100 / 3]) / sb
    assert adv[:, 0].tolist() == pytest.approx([-aa + 0.5 * ab[0], 0.5 * ab[1], aa + 0.5 * ab[2]])
    # reward aggregation (Flow-GRPO) normalises the weighted sum instead: b's spread dominates
    summed = advantages(a + 0.5 * b, groups)
    assert np.argmax(summed[:, 0]) == 1 and np.argmax(adv[:, 0]) == 2
    # one reward with weight 1 is the plain advantage; a weight scales before the clip
    np.testing.assert_array_equal(aggregate_advantages([a], [1.0], groups), advantages(a, groups))
    assert aggregate_advantages([a], [10.0], groups)[:, 0].tolist() == [-5.0, 0.0, 5.0]


def test_aggregate_advantages_bad_input() -> None:
    a = np.zeros((2, 1))
    g = np.array([0, 0])
    with pytest.raises(ValueError, match="one weight per reward"):
        aggregate_advantages([a, a], [1.0], g)
    with pytest.raises(ValueError, match="not all zero"):
        aggregate_advantages([a], [0.0], g)
    with pytest.raises(ValueError, match="shape"):
        aggregate_advantages([a, np.zeros((2, 2))], [1.0, 1.0], g)


def test_best_of_n_mask() -> None:
    # group 0 (ids 0-5) scores 5, 1, 3, 3, 0, 9: n = 4 keeps the 2 lowest (0: id 4, 1: id 1) and the
    # 2 highest (9: id 5, 5: id 0); group 1 (ids 6-9) all equal: ties by id, the lowest ids rank low
    # (6, 7) and the highest high (8, 9), so n = 4 of 4 keeps all.
    score = np.array([5, 1, 3, 3, 0, 9, 2, 2, 2, 2], dtype=float)
    groups = np.array([0] * 6 + [1] * 4)
    tids = np.arange(10)
    keep = best_of_n_mask(score, groups, 4, tids)
    assert np.flatnonzero(keep).tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    # n = 2: the best and the worst; a tie at the top goes to the higher id
    keep = best_of_n_mask(np.array([1.0, 3.0, 3.0, 0.0]), np.zeros(4, int), 2, np.array([10, 11, 12, 13]))
    assert keep.tolist() == [False, False, True, True]
    for n, match in ((3, "even n"), (0, "even n"), (8, "fewer than best-of-n")):
        with pytest.raises(ValueError, match=match):
            best_of_n_mask(score, groups, n, tids)
