"""Annotate stage: rewards pivoted per trajectory, final-only scores (no completions)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tpgrpo.algorithm import AnnotationConfig, aggregate_advantages, annotate
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


# ---------------------------------------------------------------- several rewards, best-of-n


def _weighted_rewards(parts: dict[str, tuple[float, np.ndarray]], boundaries: list[int]) -> pa.Table:
    """Scores of a `weighted` reward as its score stage stores them: the weighted sum, and each
    component's score and weight in `details` (the real reward's details are checked below)."""
    table = _rewards(sum(w * rho for w, rho in parts.values()), boundaries)
    n, b = next(iter(parts.values()))[1].shape
    details = [
        json.dumps(
            {"components": {k: {"score": float(rho[i, j]), "weight": w} for k, (w, rho) in parts.items()}}
        )
        for i in range(n)
        for j in range(b)
    ]
    return table.append_column("details", pa.array(details))


RHO_A = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0], [0.2, 0.2, 0.6], [0.4, 0.1, 0.3]])  # [N=4, W+1=3]
RHO_B = np.array([[5.0, 9.0, 0.0], [0.0, 1.0, 50.0], [3.0, 3.0, 3.0], [2.0, 0.0, 8.0]])


@pytest.mark.parametrize("mode", ["flow_grpo", "tp_constrained"])
def test_weighted_components_aggregate_reward_or_advantage(mode: str) -> None:
    """`aggregate: reward` annotates the weighted sum (the stored score, as before); `aggregate:
    advantage` annotates each component of the weighted reward on its own and sums their advantages."""
    parts = {"a": (1.0, RHO_A), "b": (0.5, RHO_B)}
    table = _weighted_rewards(parts, [0, 1, 2])
    roll, cfg = _rollouts(4, 2, 2), AnnotationConfig(mode)
    plain = annotate_iteration(table.drop_columns(["details"]), roll, cfg, AdvantageConfig())
    by_reward = annotate_iteration(table, roll, cfg, AdvantageConfig(aggregate="reward"))
    for name in ("step_reward", "advantage", "increment", "turning_point"):
        np.testing.assert_array_equal(by_reward["columns"][name], plain["columns"][name])
    out = annotate_iteration(table, roll, cfg, AdvantageConfig(aggregate="advantage"))
    cols = out["columns"]
    anns = [
        annotate(rho, np.zeros(4, np.int32), cfg, trajectory_ids=np.arange(4)) for _, rho in parts.values()
    ]
    groups = np.arange(4) // 2
    expected = aggregate_advantages([a.step_reward for a in anns], [1.0, 0.5], groups)
    np.testing.assert_allclose(np.reshape(cols["advantage"], (4, 2)), expected, rtol=1e-12)
    np.testing.assert_allclose(
        np.reshape(cols["step_reward"], (4, 2)), anns[0].step_reward + 0.5 * anns[1].step_reward
    )
    # the increments are those of the summed reward; a turning point of either reward is flagged
    np.testing.assert_allclose(np.reshape(cols["increment"], (4, 2)), np.diff(RHO_A + 0.5 * RHO_B, axis=1))
    flags = anns[0].turning_point | anns[1].turning_point
    np.testing.assert_array_equal(np.reshape(cols["turning_point"], (4, 2)), flags)
    assert out["summary"]["rewards_combined"] == 2
    assert out["summary"]["reward_final_mean.b"] == pytest.approx(RHO_B[:, -1].mean())
    # group (0, 1) under flow_grpo: a's final 1 vs 0 -> A_a = ±0.9998, b's 0 vs 50 -> A_b = ∓1.0000: the
    # advantage sum gives trajectory 0 0.9998 − 0.5·1.0000 = +0.4998, where the summed reward (1 vs 25,
    # b's scale dominates) gives it −0.99999
    if mode == "flow_grpo":
        assert cols["advantage"][0] == pytest.approx(0.5 / 0.5001 - 0.5 * 25 / 25.0001)
        assert plain["columns"]["advantage"][0] == pytest.approx(-12 / 12.0001)


def test_the_real_weighted_reward_details_give_its_components() -> None:
    """`weighted_components` reads what `WeightedReward` writes (components' scores and weights)."""
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.annotate import weighted_components

    reward = make_reward(
        {"name": "weighted", "components": [{"spec": "jpeg", "weight": 0.3}, {"spec": "shapes", "weight": 2}]}
    )
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    res = reward.score(images, ["a photo of a red circle"] * 3)
    table = pa.table(
        {
            "trajectory_id": [0, 1, 2],
            "boundary": [0, 0, 0],
            "score": res.score,
            "details": [json.dumps(d) for d in res.details],
        }
    )
    parts = weighted_components(table)
    assert {k: w for k, (w, _) in parts.items()} == {"jpeg": 0.3, "shapes": 2.0}
    total = sum(w * np.array(t.column("score").to_pylist()) for w, t in parts.values())
    np.testing.assert_allclose(total, res.score)
    assert weighted_components(table.drop_columns(["details"])) == {}


@pytest.mark.parametrize("aggregate", ["reward", "advantage"])
def test_stored_rewards_combined_by_weights(aggregate: str) -> None:
    """`advantage.weights` combines stored rewards (`rewards/<key>`, e.g. rescored) without generating."""
    stored = {"shapes": _rewards(RHO_A, [0, 1, 2]), "jpeg": _rewards(RHO_B, [0, 1, 2])}
    adv_cfg = AdvantageConfig(aggregate=aggregate, weights={"shapes": 1.0, "jpeg": 0.5})
    roll, cfg = _rollouts(4, 2, 2), AnnotationConfig("tp")
    out = annotate_iteration(stored["shapes"], roll, cfg, adv_cfg, stored)
    if aggregate == "reward":  # the weighted sum of the stored rewards, annotated as one reward
        same = annotate_iteration(_rewards(RHO_A + 0.5 * RHO_B, [0, 1, 2]), roll, cfg, AdvantageConfig())
    else:  # the same as a weighted reward's components
        parts = {"shapes": (1.0, RHO_A), "jpeg": (0.5, RHO_B)}
        same = annotate_iteration(
            _weighted_rewards(parts, [0, 1, 2]), roll, cfg, AdvantageConfig(aggregate="advantage")
        )
    np.testing.assert_allclose(out["columns"]["advantage"], same["columns"]["advantage"], rtol=1e-12)
    np.testing.assert_allclose(out["columns"]["step_reward"], same["columns"]["step_reward"], rtol=1e-12)
    with pytest.raises(DataError, match=r"advantage.weights names reward 'jpeg'.*rescore"):
        annotate_iteration(stored["shapes"], roll, cfg, adv_cfg, {"shapes": stored["shapes"]})


def test_best_of_n_zeroes_the_middle_of_each_group() -> None:
    # one group of 6, final rewards 0.1 … 0.6 in a shuffled order: n = 2 keeps the best (0.6, id 4)
    # and the worst (0.1, id 2); n = 4 also 0.5 (id 0) and 0.2 (id 5)
    final = np.array([[0.5], [0.3], [0.1], [0.4], [0.6], [0.2]])
    roll = _rollouts(6, 2, 6)
    for n, kept in ((2, [2, 4]), (4, [0, 2, 4, 5])):
        out = annotate_iteration(
            _rewards(final, [2]), roll, AnnotationConfig("flow_grpo"), AdvantageConfig(best_of_n=n)
        )
        adv = np.reshape(out["columns"]["advantage"], (6, 2))
        assert np.flatnonzero(adv[:, 0] != 0).tolist() == kept
        # the kept trajectories keep their advantages of the whole group's statistics
        full = annotate_iteration(
            _rewards(final, [2]), roll, AnnotationConfig("flow_grpo"), AdvantageConfig()
        )
        np.testing.assert_array_equal(adv[kept], np.reshape(full["columns"]["advantage"], (6, 2))[kept])
        assert out["summary"]["best_of_n_dropped"] == 6 - n
