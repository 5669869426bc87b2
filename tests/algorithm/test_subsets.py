"""Random step subsets (`update.timestep_fraction`): counts, seeding, independence from order."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.algorithm import num_trained_steps, trained_step_mask


@pytest.mark.parametrize(
    ("w", "fraction", "expected"),
    [
        (9, 1.0, 9),
        (9, 0.6, 5),  # floor(5.4), as DanceGRPO's int((T − 1)·0.6)
        (15, 0.6, 9),  # DanceGRPO's FLUX runs: 16 steps, the last dropped, 9 trained
        (10, 0.7, 7),  # 0.7·10 = 7.000000000000001 in floats
        (100, 0.29, 29),  # 0.29·100 = 28.999999999999996 in floats: still 29
        (3, 0.5, 1),
        (1, 1.0, 1),
    ],
)
def test_num_trained_steps(w: int, fraction: float, expected: int) -> None:
    assert num_trained_steps(w, fraction) == expected


def test_num_trained_steps_refuses_an_empty_subset() -> None:
    with pytest.raises(
        ValueError, match=r"floor\(9 × 0\.1\) = 0 of the window's 9 steps; use a fraction ≥ 0\.1111"
    ):
        num_trained_steps(9, 0.1)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            num_trained_steps(9, bad)
    with pytest.raises(ValueError, match="window_size"):
        num_trained_steps(0, 0.5)


def test_mask_counts_and_full_fraction() -> None:
    tids = np.arange(20)
    mask = trained_step_mask(0, 3, 0, tids, 9, 0.6)
    assert mask.shape == (20, 9) and mask.dtype == bool
    assert (mask.sum(axis=1) == 5).all()
    assert len({tuple(row) for row in mask.tolist()}) > 1  # per-sample subsets, not one shared subset
    assert trained_step_mask(0, 3, 0, tids, 9, 1.0).all()  # fraction 1: every step, no draw


def test_mask_is_a_function_of_seed_iteration_epoch_and_trajectory() -> None:
    tids = np.array([5, 1, 9, 3])
    mask = trained_step_mask(7, 2, 1, tids, 8, 0.5)
    # the same trajectory gets the same subset whatever the order or company it is computed in
    again = trained_step_mask(7, 2, 1, tids[::-1].copy(), 8, 0.5)[::-1]
    assert np.array_equal(mask, again)
    alone = np.vstack([trained_step_mask(7, 2, 1, np.array([t]), 8, 0.5) for t in tids])
    assert np.array_equal(mask, alone)
    # the subset of trajectory 5 from its own generator: the first 4 of a permutation of 8
    expected = np.zeros(8, bool)
    expected[np.random.default_rng([7, 2, 1, 5, 3]).permutation(8)[:4]] = True
    assert np.array_equal(mask[0], expected)
    # another epoch, iteration or seed draws other subsets
    many = np.arange(32)
    base = trained_step_mask(7, 2, 1, many, 8, 0.5)
    for other in ((7, 2, 2), (7, 3, 1), (8, 2, 1)):
        assert not np.array_equal(base, trained_step_mask(*other, many, 8, 0.5))


def test_mask_bad_ids() -> None:
    with pytest.raises(ValueError, match="1-D integer array"):
        trained_step_mask(0, 0, 0, np.array([0.5]), 4, 0.5)
