"""Group-normalised advantages per trained step (SPEC.md §6), multi-reward aggregation, best-of-n.

For trained step `j` and prompt group `g`: `A = (x − mean_g) / (std + eps)`, with `std` the
population std (ddof = 0) over the group (or over the whole batch), clipped to `[−clip, clip]`.

Several rewards `c` with weights `w_c` combine in one of two ways (`advantage.aggregate`):
- `reward` (Flow-GRPO): the weighted sum of rewards `Σ_c w_c·x_c`, then normalised;
- `advantage` (DanceGRPO's multi-reward runs, MixGRPO's `advantage_aggr`, GDPO): each reward
  normalised within its group, then the weighted sum of advantages `Σ_c w_c·A_c`, then clipped
  (`aggregate_advantages`). A reward with a large spread no longer drowns the others.

Best-of-n (`best_of_n_mask`): only the top and bottom `n/2` trajectories of each group are trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

STD_SCOPES = ("group", "batch")


def _check_matrix(values: np.ndarray, name: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array [N, W]: {err}") from None
    if out.ndim != 2 or out.shape[0] < 1 or out.shape[1] < 1:
        raise ValueError(f"{name} must have shape [N, W] with N, W >= 1, got shape {tuple(out.shape)}")
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} has NaN or infinite values in rows {bad.tolist()}")
    return out


def _centered(x: np.ndarray) -> np.ndarray:
    """`x − mean(x, axis=0)`, exactly zero where a column is constant.

    Shifting by the first row before averaging makes a constant column's deviations exactly 0
    (a plain float mean of equal values can be off by one ulp, leaving tiny non-zero advantages).
    """
    shifted = x - x[:1]  # [n, W]
    return shifted - shifted.mean(axis=0)  # [n, W]


def advantages(
    step_reward: np.ndarray,
    group_id: np.ndarray,
    *,
    std_scope: Literal["group", "batch"] = "group",
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> np.ndarray:
    """Advantages of each trained step, normalised within its prompt group.

    Args:
        step_reward (`np.ndarray`): `[N, W]` finite step rewards.
        group_id (`np.ndarray`): `[N]` int prompt group of each trajectory; every group needs at
            least two trajectories.
        std_scope (`str`, defaults to `"group"`): `"group"` divides by the group's std of step `j`,
            `"batch"` by the std of step `j` over all `N` trajectories.
        clip (`float` or `None`, defaults to 5.0): `A_max` (> 0); None: not clipped.
        eps (`float`, defaults to 1e-4): added to the std (> 0).

    Returns:
        `np.ndarray`: `[N, W]` float64 advantages in `[−clip, clip]`.
    """
    x = _check_matrix(step_reward, "step_reward")
    groups = np.asarray(group_id)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"group_id must have shape [N] = [{x.shape[0]}], got shape {tuple(groups.shape)}")
    if not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"group_id must be integers, got dtype {groups.dtype}")
    if std_scope not in STD_SCOPES:
        raise ValueError(f"unknown std_scope {std_scope!r}; valid: {', '.join(STD_SCOPES)}")
    if clip is not None and not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if (counts < 2).any():
        raise ValueError(
            f"groups {ids[counts < 2].tolist()} have a single trajectory: a group needs >= 2 "
            "trajectories for a relative advantage"
        )

    batch_std = np.sqrt((_centered(x) ** 2).mean(axis=0))  # [W]
    out = np.empty_like(x)  # [N, W]
    for g in range(ids.size):
        rows = inverse == g
        dev = _centered(x[rows])  # [n_g, W]
        std = np.sqrt((dev**2).mean(axis=0)) if std_scope == "group" else batch_std  # [W]
        out[rows] = dev / (std + eps)
    return out if clip is None else np.clip(out, -clip, clip)


def aggregate_advantages(
    step_rewards: Sequence[np.ndarray],
    weights: Sequence[float],
    group_id: np.ndarray,
    *,
    std_scope: Literal["group", "batch"] = "group",
    clip: float = 5.0,
    eps: float = 1e-4,
) -> np.ndarray:
    """`clip(Σ_c w_c·A_c)`: each reward's step rewards normalised on their own (unclipped), then the
    weighted sum of the advantages, clipped once.

    Args:
        step_rewards (`Sequence[np.ndarray]`): `C` arrays `[N, W]` of finite step rewards, one per reward.
        weights (`Sequence[float]`): `C` finite weights, not all zero.
        group_id (`np.ndarray`): `[N]` int prompt group of each trajectory.
        std_scope, clip, eps: as for `advantages`.

    Returns:
        `np.ndarray`: `[N, W]` float64 advantages in `[−clip, clip]`.
    """
    if len(step_rewards) != len(weights) or not step_rewards:
        raise ValueError(
            f"need one weight per reward and at least one reward, got {len(step_rewards)} rewards and "
            f"{len(weights)} weights"
        )
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or not (w != 0).any():
        raise ValueError(f"weights must be finite and not all zero, got {list(weights)}")
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    total: np.ndarray | None = None
    for x, weight in zip(step_rewards, w, strict=True):
        part = weight * advantages(x, group_id, std_scope=std_scope, clip=None, eps=eps)  # [N, W]
        if total is not None and part.shape != total.shape:
            raise ValueError(f"every reward needs step rewards of shape {total.shape}, got {part.shape}")
        total = part if total is None else total + part
    assert total is not None
    return np.clip(total, -clip, clip)


def best_of_n_mask(score: np.ndarray, group_id: np.ndarray, n: int, trajectory_id: np.ndarray) -> np.ndarray:
    """The trajectories best-of-n trains: in each group the `n/2` highest and `n/2` lowest `score`.

    Ties are broken by trajectory id (a lower id ranks lower), so the choice is deterministic.

    Args:
        score (`np.ndarray`): `[N]` finite ranking score of each trajectory (its final reward, or its
            aggregated final advantage).
        group_id (`np.ndarray`): `[N]` int prompt group of each trajectory.
        n (`int`): even, ≥ 2 and at most the size of every group.
        trajectory_id (`np.ndarray`): `[N]` int, distinct.

    Returns:
        `np.ndarray`: `[N]` bool, `n` true entries per group.
    """
    x = np.asarray(score, dtype=np.float64)
    groups, tids = np.asarray(group_id), np.asarray(trajectory_id)
    if x.ndim != 1 or groups.shape != x.shape or tids.shape != x.shape:
        raise ValueError(
            f"score, group_id and trajectory_id must have one shape [N], got {x.shape}, {groups.shape}, "
            f"{tids.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("score has NaN or infinite values")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise ValueError(f"best-of-n needs an even n >= 2, got {n!r}")
    keep = np.zeros(x.shape, dtype=bool)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if rows.size < n:
            raise ValueError(f"group {g} has {rows.size} trajectories, fewer than best-of-n's n = {n}")
        ranked = rows[np.lexsort((tids[rows], x[rows]))]  # ascending score, then id
        keep[ranked[: n // 2]] = True
        keep[ranked[rows.size - n // 2 :]] = True
    return keep


def zero_advantage_mask(adv: np.ndarray) -> np.ndarray:
    """Trajectories whose advantages are all zero (they carry no signal and may be skipped).

    Args:
        adv (`np.ndarray`): `[N, W]` finite advantages.

    Returns:
        `np.ndarray`: `[N]` bool.
    """
    adv = _check_matrix(adv, "adv")
    return np.all(adv == 0, axis=1)  # [N]


def zero_std_groups(step_reward: np.ndarray, group_id: np.ndarray) -> np.ndarray:
    """Which prompt groups have no signal: step rewards all equal within the group at every step.

    Such a group's advantages are all zero (its deviations from the group mean are exactly zero,
    whatever `std_scope`), so it adds nothing to the update: with Flow-GRPO's terminal reward, every
    sample of the prompt scored the same.

    Args:
        step_reward (`np.ndarray`): `[N, W]` finite step rewards.
        group_id (`np.ndarray`): `[N]` int prompt group of each trajectory.

    Returns:
        `np.ndarray`: `[G]` bool, one per distinct group id in sorted order.
    """
    x = _check_matrix(step_reward, "step_reward")
    groups = np.asarray(group_id)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"group_id must have shape [N] = [{x.shape[0]}], got shape {tuple(groups.shape)}")
    ids, inverse = np.unique(groups, return_inverse=True)
    return np.array([bool((x[inverse == g] == x[inverse == g][:1]).all()) for g in range(ids.size)])
