"""Step rewards from boundary rewards: increments, turning points, balancing (SPEC.md §4, §5).

Input is `ρ [N, W + 1]`: the reward of the ODE completion of each window boundary state of `N`
trajectories. All arithmetic is numpy float64. Notation: `d_j = ρ_{j+1} − ρ_j` (increment),
`r_agg_j = ρ_W − ρ_j` (aggregated long-term reward), `Δ = ρ_W − ρ_0` (trend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpgrpo.config import MODES  # declared once, with the config's `reward.mode`


@dataclass(frozen=True)
class AnnotationConfig:
    """How to turn boundary rewards into step rewards.

    Args:
        mode (`str`): one of `MODES`.
        initial_step (`bool`, defaults to `True`): the initial-step scheme (step `j = 0` can be a
            turning point). Only used by the `tp` modes.
        balance (`bool`, defaults to `True`): balance kept turning points by sign within each
            scope. Only used by the `tp` modes.
    """

    mode: str
    initial_step: bool = True
    balance: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown annotation mode {self.mode!r}; valid modes: {', '.join(MODES)}")


@dataclass
class Annotation:
    """Per-step annotation of `N` trajectories with `W` trained steps (all numpy).

    Args:
        increment (`np.ndarray`): `[N, W]` float64 `d_j`.
        aggregated (`np.ndarray`): `[N, W]` float64 `r_agg_j`.
        trend (`np.ndarray`): `[N]` float64 `Δ`.
        turning_point (`np.ndarray`): `[N, W]` bool, detected turning points (all False outside
            the `tp` modes).
        kept (`np.ndarray`): `[N, W]` bool, turning points still kept after balancing.
        step_reward (`np.ndarray`): `[N, W]` float64 reward of each trained step.
    """

    increment: np.ndarray  # [N, W]
    aggregated: np.ndarray  # [N, W]
    trend: np.ndarray  # [N]
    turning_point: np.ndarray  # [N, W]
    kept: np.ndarray  # [N, W]
    step_reward: np.ndarray  # [N, W]


def _check_rho(rho: np.ndarray) -> np.ndarray:
    try:
        out = np.asarray(rho, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rho must be a numeric array [N, W + 1]: {err}") from None
    if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] < 2:
        raise ValueError(
            f"rho must have shape [N, W + 1] with N >= 1 and W >= 1, got shape {tuple(out.shape)}"
        )
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(f"rho has NaN or infinite rewards in rows {bad.tolist()}")
    return out


def _check_ids(ids: np.ndarray, n: int, name: str) -> np.ndarray:
    out = np.asarray(ids)
    if out.shape != (n,):
        raise ValueError(f"{name} must have shape [N] = [{n}], got shape {tuple(out.shape)}")
    if not np.issubdtype(out.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {out.dtype}")
    return out


def _check_unique_within_scope(scope: np.ndarray, trajectory_ids: np.ndarray) -> None:
    pairs = np.stack([scope, trajectory_ids], axis=1)  # [N, 2]
    if np.unique(pairs, axis=0).shape[0] != pairs.shape[0]:
        raise ValueError("trajectory_ids must be unique within each scope (they break balancing ties)")


def detect_turning_points(rho: np.ndarray, *, constrained: bool, initial_step: bool) -> np.ndarray:
    """Turning points of each trajectory (paper Def. 4.1 / 5.1, Remark 4.2), before balancing.

    Step `j ≥ 1` is a plain turning point if `sgn(d_{j−1})·sgn(Δ) < 0` and `sgn(d_j)·sgn(Δ) > 0`;
    the constrained one also needs `sgn(d_j)·sgn(ρ_W − ρ_{j+1}) > 0`. The initial step `j = 0`
    (if enabled) needs `sgn(d_0)·sgn(Δ) > 0` (plain) or `sgn(d_0)·sgn(ρ_W − ρ_1) > 0`
    (constrained). A step with `r_agg_j = 0` is never a turning point.

    Args:
        rho (`np.ndarray`): `[N, W + 1]` finite boundary rewards.
        constrained (`bool`): use the consistency-constrained definition.
        initial_step (`bool`): allow step 0 to be a turning point.

    Returns:
        `np.ndarray`: `[N, W]` bool.
    """
    rho = _check_rho(rho)
    sgn_d = np.sign(np.diff(rho, axis=1))  # [N, W]
    aggregated = rho[:, -1:] - rho[:, :-1]  # [N, W]
    sgn_trend = np.sign(rho[:, -1] - rho[:, 0])[:, None]  # [N, 1]
    # ρ_W − ρ_{j+1}: the long-term effect of what follows step j; 0 after the last step.
    sgn_follow = np.zeros_like(sgn_d)  # [N, W]
    sgn_follow[:, :-1] = np.sign(aggregated[:, 1:])

    tp = np.zeros(sgn_d.shape, dtype=bool)  # [N, W]
    tp[:, 1:] = (sgn_d[:, :-1] * sgn_trend < 0) & (sgn_d[:, 1:] * sgn_trend > 0)
    if constrained:
        tp[:, 1:] &= sgn_d[:, 1:] * sgn_follow[:, 1:] > 0
    if initial_step:
        reference = sgn_follow[:, 0] if constrained else sgn_trend[:, 0]  # [N]
        tp[:, 0] = sgn_d[:, 0] * reference > 0
    return tp & (aggregated != 0)


def balance_turning_points(
    detected: np.ndarray, aggregated: np.ndarray, scope: np.ndarray, trajectory_ids: np.ndarray
) -> np.ndarray:
    """Keep equally many positive and negative turning points per scope (paper App. D).

    Within each scope value, if both signs of `r_agg` occur among the detected turning points,
    keep the `K = min(#pos, #neg)` largest `|r_agg|` of each sign (ties: smaller trajectory id,
    then smaller step); if only one sign occurs, keep all.

    Args:
        detected (`np.ndarray`): `[N, W]` bool detected turning points (`r_agg ≠ 0` there).
        aggregated (`np.ndarray`): `[N, W]` float64 `r_agg`.
        scope (`np.ndarray`): `[N]` int balancing scope of each trajectory.
        trajectory_ids (`np.ndarray`): `[N]` int ids, unique within a scope.

    Returns:
        `np.ndarray`: `[N, W]` bool kept turning points (a subset of `detected`).
    """
    if detected.ndim != 2 or aggregated.shape != detected.shape:
        raise ValueError(
            f"detected and aggregated must share a shape [N, W], got {detected.shape} and {aggregated.shape}"
        )
    scope = _check_ids(scope, detected.shape[0], "scope")
    trajectory_ids = _check_ids(trajectory_ids, detected.shape[0], "trajectory_ids")
    _check_unique_within_scope(scope, trajectory_ids)
    kept = detected.copy()  # [N, W]
    for value in np.unique(scope):
        rows = np.flatnonzero(scope == value)  # [n_s]
        ids = trajectory_ids[rows]  # [n_s]
        r, step = np.nonzero(detected[rows])  # [M], [M]
        replacement = aggregated[rows[r], step]  # [M]
        positive, negative = replacement > 0, replacement < 0
        k = min(int(positive.sum()), int(negative.sum()))
        if k == 0:
            continue
        for sign in (positive, negative):
            magnitude, cand_ids, cand_steps = np.abs(replacement[sign]), ids[r[sign]], step[sign]
            order = np.lexsort((cand_steps, cand_ids, -magnitude))  # primary key last
            dropped = order[k:]
            kept[rows[r[sign][dropped]], cand_steps[dropped]] = False
    return kept


def annotate(
    rho: np.ndarray,
    scope: np.ndarray,
    config: AnnotationConfig,
    trajectory_ids: np.ndarray | None = None,
) -> Annotation:
    """Annotate `N` trajectories: increments, turning points and step rewards for `config.mode`.

    | mode | step reward of trained step j |
    |---|---|
    | `flow_grpo` | `ρ_W` |
    | `incremental` | `d_j` |
    | `tp` / `tp_constrained` | `r_agg_j` at kept turning points, `d_j` elsewhere |

    Args:
        rho (`np.ndarray`): `[N, W + 1]` finite boundary rewards `ρ_0 … ρ_W`.
        scope (`np.ndarray`): `[N]` int balancing scope of each trajectory (e.g. the rollout batch).
        config (`AnnotationConfig`): mode and switches.
        trajectory_ids (`np.ndarray`, *optional*): `[N]` int ids, unique within a scope, for the
            balancing tie-break; defaults to the row index.

    Returns:
        `Annotation`
    """
    rho = _check_rho(rho)
    n, width = rho.shape[0], rho.shape[1] - 1
    scope = _check_ids(scope, n, "scope")
    ids = np.arange(n) if trajectory_ids is None else _check_ids(trajectory_ids, n, "trajectory_ids")
    _check_unique_within_scope(scope, ids)

    increment = np.diff(rho, axis=1)  # [N, W]
    aggregated = rho[:, -1:] - rho[:, :-1]  # [N, W]
    trend = rho[:, -1] - rho[:, 0]  # [N]
    if config.mode in ("tp", "tp_constrained"):
        detected = detect_turning_points(
            rho, constrained=config.mode == "tp_constrained", initial_step=config.initial_step
        )  # [N, W]
        kept = balance_turning_points(detected, aggregated, scope, ids) if config.balance else detected.copy()
        step_reward = np.where(kept, aggregated, increment)  # [N, W]
    else:
        detected = np.zeros((n, width), dtype=bool)
        kept = detected.copy()
        if config.mode == "flow_grpo":
            step_reward = np.repeat(rho[:, -1:], width, axis=1)  # [N, W]
        else:
            step_reward = increment.copy()
    return Annotation(
        increment=increment,
        aggregated=aggregated,
        trend=trend,
        turning_point=detected,
        kept=kept,
        step_reward=step_reward,
    )
