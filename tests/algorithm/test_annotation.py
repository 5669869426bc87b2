"""Tests of increments, turning points, balancing and step rewards (SPEC.md §4, §5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tpgrpo.algorithm import MODES, Annotation, AnnotationConfig, annotate, detect_turning_points

PLAIN = AnnotationConfig("tp", balance=False)
CONSTRAINED = AnnotationConfig("tp_constrained", balance=False)


def _one(rho: list[float], config: AnnotationConfig) -> Annotation:
    return annotate(np.array([rho]), np.zeros(1, dtype=int), config)


# ---------------------------------------------------------------- the four cases of the paper


def test_normal_point() -> None:
    # ρ = [0, 1, 2, 3]: d = [1, 1, 1], Δ = 3, r_agg = [3, 2, 1]. No step follows a step against the
    # trend, so no j ≥ 1 is a turning point; every step keeps d_j.
    for config in (PLAIN, CONSTRAINED):
        ann = _one([0, 1, 2, 3], AnnotationConfig(config.mode, initial_step=False, balance=False))
        assert ann.increment.tolist() == [[1, 1, 1]]
        assert ann.aggregated.tolist() == [[3, 2, 1]]
        assert ann.trend.tolist() == [3]
        assert not ann.turning_point.any()
        assert ann.step_reward.tolist() == [[1, 1, 1]]


def test_local_flip_against_the_trend() -> None:
    # ρ = [0, 2, 1, 3, 4]: d = [2, −1, 2, 1], Δ = 4, r_agg = [4, 2, 3, 1].
    # Step 1 goes against the trend: not a turning point, it keeps its own d_1 = −1 (it is not
    # credited with the trajectory's success). Step 2 turns back with the trend after it: plain
    # turning point with r_agg_2 = 3; constrained too, as ρ_W − ρ_3 = 1 > 0 follows its way.
    for config in (PLAIN, CONSTRAINED):
        ann = _one([0, 2, 1, 3, 4], AnnotationConfig(config.mode, initial_step=False, balance=False))
        assert ann.turning_point.tolist() == [[False, False, True, False]]
        assert ann.step_reward.tolist() == [[2, -1, 3, 1]]


def test_good_turning_point_improving_trajectory() -> None:
    # ρ = [0, 1, 0.5, 2, 3]: d = [1, −0.5, 1.5, 1], Δ = 3, r_agg = [3, 2, 2.5, 1].
    # j = 2: d_1 < 0 (against), d_2 > 0 (with): turning point; ρ_W − ρ_3 = 1 > 0 (constrained ok).
    # Its reward becomes r_agg_2 = 2.5 > d_2 = 1.5. Initial step: d_0·Δ > 0 and d_0·(ρ_W − ρ_1) > 0.
    for config in (PLAIN, CONSTRAINED):
        ann = _one([0, 1, 0.5, 2, 3], config)
        assert ann.turning_point.tolist() == [[True, False, True, False]]
        assert ann.kept.tolist() == [[True, False, True, False]]
        assert ann.step_reward.tolist() == [[3, -0.5, 2.5, 1]]
        off = _one([0, 1, 0.5, 2, 3], AnnotationConfig(config.mode, initial_step=False, balance=False))
        assert off.step_reward.tolist() == [[1, -0.5, 2.5, 1]]


def test_bad_turning_point_worsening_trajectory() -> None:
    # The mirror image: ρ = [0, −1, −0.5, −2, −3], d = [−1, 0.5, −1.5, −1], Δ = −3,
    # r_agg = [−3, −2, −2.5, −1]. j = 2 turns back down with the trend: reward r_agg_2 = −2.5.
    for config in (PLAIN, CONSTRAINED):
        ann = _one([0, -1, -0.5, -2, -3], config)
        assert ann.turning_point.tolist() == [[True, False, True, False]]
        assert ann.step_reward.tolist() == [[-3, 0.5, -2.5, -1]]


# ---------------------------------------------------------------- edge cases of the definition


def test_zero_increments_never_qualify() -> None:
    # ρ = [0, 0, 1, 1, 2]: d = [0, 1, 0, 1], Δ = 2. sgn(0) = 0 makes every strict condition false:
    # j = 1 and j = 3 follow a zero step, j = 2 is a zero step, the initial step is a zero step.
    for config in (PLAIN, CONSTRAINED):
        ann = _one([0, 0, 1, 1, 2], config)
        assert not ann.turning_point.any()
        assert ann.step_reward.tolist() == [[0, 1, 0, 1]]


def test_zero_trend_has_no_turning_points() -> None:
    # ρ = [0, 1, −1, 0]: d = [1, −2, 1], Δ = 0 -> sgn(Δ) = 0, no plain condition holds.
    # Constrained initial step: d_0·(ρ_W − ρ_1) = 1·(−1) < 0.
    for config in (PLAIN, CONSTRAINED):
        assert not _one([0, 1, -1, 0], config).turning_point.any()


def test_zero_long_term_effect_is_not_a_turning_point() -> None:
    # ρ = [0, 2, 1, 2, 1]: d = [2, −1, 1, −1], Δ = 1, r_agg = [1, −1, 0, −1].
    # j = 2 meets the plain conditions (d_1 < 0, d_2 > 0) but r_agg_2 = 0: excluded.
    # j = 0: d_0·Δ > 0, r_agg_0 = 1: turning point.
    ann = _one([0, 2, 1, 2, 1], PLAIN)
    assert ann.turning_point.tolist() == [[True, False, False, False]]
    assert ann.step_reward.tolist() == [[1, -1, 1, -1]]


def test_constrained_rejects_a_step_whose_follow_up_reverses() -> None:
    # ρ = [0, −1, 2, 1.5, 1]: d = [−1, 3, −0.5, −0.5], Δ = 1, r_agg = [1, 2, −1, −0.5].
    # j = 1: d_0 < 0 against, d_1 > 0 with: a plain turning point (reward r_agg_1 = 2).
    # Constrained: ρ_W − ρ_2 = −1 reverses d_1 > 0: rejected, reward stays d_1 = 3.
    # Initial step: d_0·Δ < 0 (plain) and d_0·(ρ_W − ρ_1) = −1·2 < 0 (constrained): none.
    rho = [0, -1, 2, 1.5, 1]
    assert _one(rho, PLAIN).turning_point.tolist() == [[False, True, False, False]]
    assert _one(rho, PLAIN).step_reward.tolist() == [[-1, 2, -0.5, -0.5]]
    assert not _one(rho, CONSTRAINED).turning_point.any()
    assert _one(rho, CONSTRAINED).step_reward.tolist() == [[-1, 3, -0.5, -0.5]]


def test_last_step_is_never_constrained() -> None:
    # ρ = [0, 1, 0.5, 2]: d = [1, −0.5, 1.5], Δ = 2, r_agg = [2, 1, 1.5]. The last step j = 2 is a
    # plain turning point; constrained needs ρ_W − ρ_3 = 0 to have its sign: never.
    off = {"initial_step": False, "balance": False}
    assert _one([0, 1, 0.5, 2], AnnotationConfig("tp", **off)).turning_point.tolist() == [
        [False, False, True]
    ]
    assert not _one([0, 1, 0.5, 2], AnnotationConfig("tp_constrained", **off)).turning_point.any()
    # W = 1: the only step is initial and last. Plain: d_0·Δ = 1 > 0; constrained: ρ_W − ρ_1 = 0.
    assert _one([0, 1], PLAIN).turning_point.tolist() == [[True]]
    assert not _one([0, 1], CONSTRAINED).turning_point.any()


def test_initial_step_variants_differ() -> None:
    # ρ = [0, 2, 1]: d = [2, −1], Δ = 1, r_agg = [1, −1].
    # Plain initial: d_0·Δ = 2 > 0 -> turning point, reward r_agg_0 = 1 (less than d_0 = 2).
    # Constrained initial: d_0·(ρ_W − ρ_1) = 2·(−1) < 0 -> not, reward d_0 = 2.
    assert _one([0, 2, 1], PLAIN).step_reward.tolist() == [[1, -1]]
    assert _one([0, 2, 1], CONSTRAINED).step_reward.tolist() == [[2, -1]]
    # Switched off, step 0 is never a turning point.
    off = AnnotationConfig("tp", initial_step=False, balance=False)
    assert not _one([0, 2, 1], off).turning_point.any()


# ---------------------------------------------------------------- balancing


GOOD = [0, 1, 0.5, 2, 3]  # turning points j = 0 (r_agg 3), j = 2 (2.5)
BAD = [0, -1, -0.5, -2, -3]  # turning points j = 0 (−3), j = 2 (−2.5)
MILD = [0, 1, 0.9, 1.5, 2]  # d = [1, −0.1, 0.6, 0.5], Δ = 2, r_agg = [2, 1, 1.1, 0.5]: j = 0 (2), j = 2 (1.1)


def test_balancing_more_positives_than_negatives() -> None:
    # One scope: positives 3, 2.5 (GOOD), 2, 1.1 (MILD); negatives −3, −2.5 (BAD). K = min(4, 2) = 2:
    # keep the two largest positives (both GOOD) and both negatives; MILD returns to d.
    ann = annotate(np.array([GOOD, BAD, MILD]), np.zeros(3, dtype=int), AnnotationConfig("tp"))
    assert ann.turning_point.tolist() == [[True, False, True, False]] * 3
    assert ann.kept.tolist() == [[True, False, True, False]] * 2 + [[False] * 4]
    assert ann.step_reward[2].tolist() == pytest.approx([1, -0.1, 0.6, 0.5])
    assert ann.step_reward[:2].tolist() == [[3, -0.5, 2.5, 1], [-3, 0.5, -2.5, -1]]


def test_balancing_one_sign_only_keeps_all() -> None:
    ann = annotate(np.array([GOOD, MILD]), np.zeros(2, dtype=int), AnnotationConfig("tp"))
    assert ann.kept.tolist() == ann.turning_point.tolist() == [[True, False, True, False]] * 2


def test_balancing_is_within_scope() -> None:
    # Scope 0 holds only positives, scope 1 only negatives: nothing is dropped.
    ann = annotate(np.array([GOOD, MILD, BAD]), np.array([0, 0, 1]), AnnotationConfig("tp"))
    assert ann.kept.tolist() == ann.turning_point.tolist()
    # Same rows in one scope: K = 2 positives of 4 are kept.
    one = annotate(np.array([GOOD, MILD, BAD]), np.zeros(3, dtype=int), AnnotationConfig("tp"))
    assert int(one.kept.sum()) == 4


def test_balancing_ties_by_trajectory_id_then_step() -> None:
    no_init = AnnotationConfig("tp", initial_step=False)
    # Two identical GOOD rows (one positive turning point each, r_agg_2 = 2.5) and one BAD row
    # (r_agg_2 = −2.5): K = 1. The tie goes to the smaller trajectory_id, 3 (row 1), not row 0.
    rho = np.array([GOOD, GOOD, BAD])
    ann = annotate(rho, np.zeros(3, dtype=int), no_init, trajectory_ids=np.array([7, 3, 9]))
    assert ann.kept[:, 2].tolist() == [False, True, True]
    # Default ids are the row index: row 0 wins.
    assert annotate(rho, np.zeros(3, dtype=int), no_init).kept[:, 2].tolist() == [True, False, True]
    # Within one trajectory: ρ = [0, 1, .5, 1, .5, 1, 2], d = [1, −.5, .5, −.5, .5, 1], Δ = 2,
    # turning points j = 2 and j = 4 both with r_agg = 2 − 0.5 = 1.5. The negative row
    # [0, −1, −.5, −2, −2, −2, −3] has one (j = 2, r_agg = −2.5). K = 1: the smaller step, j = 2.
    rho = np.array([[0, 1, 0.5, 1, 0.5, 1, 2], [0, -1, -0.5, -2, -2, -2, -3]])
    ann = annotate(rho, np.zeros(2, dtype=int), no_init)
    assert ann.turning_point[0].tolist() == [False, False, True, False, True, False]
    assert ann.kept[0].tolist() == [False, False, True, False, False, False]
    assert ann.kept[1].tolist() == [False, False, True, False, False, False]


# ---------------------------------------------------------------- modes


def test_modes_on_one_array() -> None:
    rho = np.array([GOOD, BAD])
    scope = np.zeros(2, dtype=int)
    flow = annotate(rho, scope, AnnotationConfig("flow_grpo"))
    # terminal reward broadcast: ρ_W = 3 and −3 on every step; no flags.
    assert flow.step_reward.tolist() == [[3] * 4, [-3] * 4]
    assert not flow.turning_point.any() and not flow.kept.any()
    inc = annotate(rho, scope, AnnotationConfig("incremental"))
    assert inc.step_reward.tolist() == [[1, -0.5, 1.5, 1], [-1, 0.5, -1.5, -1]]
    assert not inc.turning_point.any() and not inc.kept.any()


# ---------------------------------------------------------------- properties


rho_arrays = st.integers(1, 6).flatmap(
    lambda n: st.integers(1, 6).flatmap(
        lambda w: hnp.arrays(
            np.float64,
            (n, w + 1),
            elements=st.one_of(
                st.floats(-100, 100, allow_nan=False),
                st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # discrete scores: ties and zero steps
            ),
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(rho=rho_arrays, mode=st.sampled_from(MODES))
def test_telescoping_identities(rho: np.ndarray, mode: str) -> None:
    ann = annotate(rho, np.zeros(rho.shape[0], dtype=int), AnnotationConfig(mode))
    scale = 1e-9 * (1 + np.abs(rho).max())
    # Σ_j d_j = Δ
    assert np.allclose(ann.increment.sum(axis=1), ann.trend, rtol=0, atol=scale)
    # r_agg_j = Σ_{i ≥ j} d_i (reverse cumulative sum)
    suffix = np.cumsum(ann.increment[:, ::-1], axis=1)[:, ::-1]
    assert np.allclose(ann.aggregated, suffix, rtol=0, atol=scale)
    assert np.array_equal(ann.aggregated[:, 0], ann.trend)  # r_agg_0 = Δ


@settings(max_examples=200, deadline=None)
@given(rho=rho_arrays)
def test_flow_grpo_is_terminal_reward_broadcast(rho: np.ndarray) -> None:
    ann = annotate(rho, np.zeros(rho.shape[0], dtype=int), AnnotationConfig("flow_grpo"))
    assert np.array_equal(ann.step_reward, np.broadcast_to(rho[:, -1:], ann.step_reward.shape))


@settings(max_examples=200, deadline=None)
@given(rho=rho_arrays, initial_step=st.booleans(), data=st.data())
def test_turning_point_invariants(rho: np.ndarray, initial_step: bool, data: st.DataObject) -> None:
    n = rho.shape[0]
    scope = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    plain = detect_turning_points(rho, constrained=False, initial_step=initial_step)
    strict = detect_turning_points(rho, constrained=True, initial_step=initial_step)
    # Constrained turning points are plain ones, with |r_agg_j| > |d_j| (≥ in floating point:
    # ρ = [−1, 0, 1e-290] gives r_agg_0 = 1 + 1e-290 = 1 = d_0).
    assert not (strict & ~plain).any()
    d, r_agg = np.diff(rho, axis=1), rho[:, -1:] - rho[:, :-1]
    assert (np.abs(r_agg[strict]) >= np.abs(d[strict])).all()
    assert (r_agg[plain] != 0).all()
    for mode in ("tp", "tp_constrained"):
        ann = annotate(rho, scope, AnnotationConfig(mode, initial_step=initial_step))
        assert not (ann.kept & ~ann.turning_point).any()
        assert np.array_equal(ann.step_reward, np.where(ann.kept, r_agg, d))
        for s in np.unique(scope):
            rows = scope == s
            det, kept = r_agg[rows][ann.turning_point[rows]], r_agg[rows][ann.kept[rows]]
            if (det > 0).any() and (det < 0).any():
                assert (kept > 0).sum() == (kept < 0).sum() == min((det > 0).sum(), (det < 0).sum())
            else:
                assert kept.size == det.size


@settings(max_examples=100, deadline=None)
@given(rho=rho_arrays, data=st.data())
def test_annotation_does_not_depend_on_row_order(rho: np.ndarray, data: st.DataObject) -> None:
    n = rho.shape[0]
    perm = np.array(data.draw(st.permutations(range(n))))
    ids = np.arange(100, 100 + n)
    scope = np.zeros(n, dtype=int)
    config = AnnotationConfig("tp_constrained")
    ann = annotate(rho, scope, config, trajectory_ids=ids)
    shuffled = annotate(rho[perm], scope, config, trajectory_ids=ids[perm])
    assert np.array_equal(shuffled.kept, ann.kept[perm])
    assert np.array_equal(shuffled.step_reward, ann.step_reward[perm])


# ---------------------------------------------------------------- bad input


def test_unknown_mode() -> None:
    with pytest.raises(
        ValueError, match="unknown annotation mode 'tp_strict'; valid modes: flow_grpo, incremental"
    ):
        AnnotationConfig("tp_strict")


@pytest.mark.parametrize(
    ("rho", "match"),
    [
        (np.zeros(4), r"rho must have shape \[N, W \+ 1\]"),
        (np.zeros((2, 1)), r"W >= 1, got shape \(2, 1\)"),
        (np.zeros((0, 3)), r"N >= 1"),
        (np.array([[0, 1, 2], [0, np.nan, 1]]), r"NaN or infinite rewards in rows \[1\]"),
        (np.array([[0, np.inf, 2], [0, 0, 1]]), r"NaN or infinite rewards in rows \[0\]"),
        ([["a", "b"]], "rho must be a numeric array"),
    ],
)
def test_bad_rho(rho: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        annotate(rho, np.zeros(len(rho), dtype=int), AnnotationConfig("tp"))


def test_bad_scope_and_ids() -> None:
    rho = np.zeros((2, 3))
    config = AnnotationConfig("tp")
    with pytest.raises(ValueError, match=r"scope must have shape \[N\] = \[2\]"):
        annotate(rho, np.zeros(3, dtype=int), config)
    with pytest.raises(ValueError, match="scope must be integers"):
        annotate(rho, np.zeros(2), config)
    with pytest.raises(ValueError, match="trajectory_ids must be integers"):
        annotate(rho, np.zeros(2, dtype=int), config, trajectory_ids=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="unique within each scope"):
        annotate(rho, np.zeros(2, dtype=int), config, trajectory_ids=np.array([4, 4]))
    # the same id in different scopes is fine
    annotate(rho, np.array([0, 1]), config, trajectory_ids=np.array([4, 4]))
