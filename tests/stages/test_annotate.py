"""Annotate stage: rewards pivoted per trajectory, final-only scores (no completions)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tpgrpo.algorithm import AnnotationConfig
from tpgrpo.config import AdvantageConfig
from tpgrpo.errors import DataError
from tpgrpo.stages.annotate import annotate_iteration


def _rollouts(n: int, w: int, group: int) -> pa.Table:
    return pa.table(
        {
            "trajectory_id": np.arange(n),
            "group_id": np.arange(n) // group,
            "batch": np.zeros(n, np.int32),
            "window_start": np.zeros(n, np.int32),
            "window_size": np.full(n, w, np.int32),
        }
    )


def _rewards(scores: np.ndarray, boundaries: list[int]) -> pa.Table:
    n = scores.shape[0]
    return pa.table(
        {
            "trajectory_id": np.repeat(np.arange(n), len(boundaries)),
            "boundary": np.tile(boundaries, n),
            "score": scores.reshape(-1),
        }
    )


def test_full_rewards_flow_grpo_broadcasts_the_final_reward() -> None:
    rho = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0], [0.2, 0.2, 0.6], [0.4, 0.1, 0.3]])  # [N=4, W+1=3]
    out = annotate_iteration(
        _rewards(rho, [0, 1, 2]), _rollouts(4, 2, 2), AnnotationConfig("flow_grpo"), AdvantageConfig()
    )
    step_reward = np.array(out["columns"]["step_reward"]).reshape(4, 2)
    np.testing.assert_array_equal(step_reward, np.repeat(rho[:, -1:], 2, axis=1))
    # group (0, 1): final rewards 1 and 0 -> advantages ±1/(0.5 + 1e-4) ≈ ±1.9996
    adv = np.array(out["columns"]["advantage"]).reshape(4, 2)
    np.testing.assert_allclose(adv[0], 0.5 / (0.5 + 1e-4))
    np.testing.assert_allclose(adv[1], -0.5 / (0.5 + 1e-4))


def test_final_only_rewards() -> None:
    final = np.array([[1.0], [0.0], [0.6], [0.3]])  # only boundary W = 2 scored
    rewards = _rewards(final, [2])
    out = annotate_iteration(rewards, _rollouts(4, 2, 2), AnnotationConfig("flow_grpo"), AdvantageConfig())
    cols = out["columns"]
    np.testing.assert_array_equal(np.array(cols["step_reward"]).reshape(4, 2), np.repeat(final, 2, axis=1))
    assert np.isnan(cols["increment"]).all() and np.isnan(cols["aggregated"]).all()
    assert "reward_initial_mean" not in out["summary"]
    with pytest.raises(DataError, match="only flow_grpo"):
        annotate_iteration(rewards, _rollouts(4, 2, 2), AnnotationConfig("tp"), AdvantageConfig())


def test_missing_boundary_is_refused() -> None:
    rho = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]])
    table = _rewards(rho, [0, 1, 2]).slice(0, 5)  # the last score is missing
    with pytest.raises(DataError, match="trajectory 1, boundary 2"):
        annotate_iteration(table, _rollouts(2, 2, 2), AnnotationConfig("tp"), AdvantageConfig())
