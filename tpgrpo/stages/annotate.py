"""Stage 4, annotate: step rewards, turning points and advantages from stored scores (SPEC §4–§6).

Pure CPU work on the `rewards` and `rollouts` datasets: any reward mode or ablation of a stored
run is a re-annotation, seconds of compute, no sampling.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tpgrpo.algorithm import AnnotationConfig, advantages, annotate, zero_advantage_mask, zero_std_groups
from tpgrpo.config import AdvantageConfig
from tpgrpo.errors import DataError
from tpgrpo.storage import DatasetWriter, read_table


def boundary_rewards(
    rewards: Any, trajectory_ids: np.ndarray, num_boundaries: int, only: int | None = None
) -> np.ndarray:
    """Pivot a rewards table to ρ `[N, W+1]` in the order of `trajectory_ids`.

    Args:
        only (`int`, *optional*): the table holds this boundary alone: return its column `[N]`.

    Raises:
        DataError: a (trajectory, boundary) score is missing, duplicated or not finite.
    """
    row_of = {int(t): i for i, t in enumerate(trajectory_ids)}
    rho = np.full((len(trajectory_ids), num_boundaries), np.nan)
    seen = np.zeros_like(rho, dtype=np.int64)
    tids = rewards.column("trajectory_id").to_numpy()
    bounds = rewards.column("boundary").to_numpy()
    scores = rewards.column("score").to_numpy()
    for t, j, s in zip(tids, bounds, scores, strict=True):
        if int(t) not in row_of or not 0 <= int(j) < num_boundaries:
            raise DataError(f"rewards hold a score for trajectory {t}, boundary {j} that the rollouts lack")
        rho[row_of[int(t)], int(j)] = s
        seen[row_of[int(t)], int(j)] += 1
    bad = np.argwhere(~np.isfinite(rho) & (seen > 0))
    if len(bad):
        n, j = bad[0]
        raise DataError(
            f"rewards hold a non-finite score ({rho[n, j]}) for trajectory {trajectory_ids[n]}, boundary {j} "
            f"({len(bad)} in all): no advantage is computed from it; rescore the iteration (--force)"
        )
    if only is not None:
        seen, rho = seen[:, [only]], rho[:, [only]]
    if (seen != 1).any():
        n, j = np.argwhere(seen != 1)[0]
        raise DataError(
            f"rewards have {seen[n, j]} scores for trajectory {trajectory_ids[n]}, boundary {j} "
            "(expected exactly one): rerun the score stage with --force"
        )
    return rho[:, 0] if only is not None else rho


def annotate_iteration(
    rewards: Any, rollouts: Any, config: AnnotationConfig, adv_cfg: AdvantageConfig
) -> dict[str, Any]:
    """Annotate one iteration; returns the columns of the `annotations` dataset plus `summary`."""
    rollouts = rollouts.sort_by("trajectory_id")
    tids = rollouts.column("trajectory_id").to_numpy()
    groups = rollouts.column("group_id").to_numpy()
    batches = rollouts.column("batch").to_numpy()
    w0 = int(rollouts.column("window_start")[0].as_py())
    w = int(rollouts.column("window_size")[0].as_py())
    n = len(tids)
    final_only = set(rewards.column("boundary").to_pylist()) == {w}  # run without completions
    if final_only:
        if config.mode != "flow_grpo":
            raise DataError(
                f"this iteration scored only final images (branch.completions=false): mode {config.mode!r} "
                "needs intermediate rewards; only flow_grpo can be annotated"
            )
        final = boundary_rewards(rewards, tids, w + 1, only=w)  # [N]
        rho = np.repeat(final[:, None], w + 1, axis=1)  # [N, W+1]: only ρ_W is known
        ann = annotate(rho, batches, config, trajectory_ids=tids)  # flow_grpo: ρ_W broadcast
        ann.increment[:] = np.nan  # not computed without completions
        ann.aggregated[:] = np.nan
    else:
        rho = boundary_rewards(rewards, tids, w + 1)  # [N, W+1]
        ann = annotate(rho, batches, config, trajectory_ids=tids)
    adv = advantages(ann.step_reward, groups, std_scope=adv_cfg.std_scope, clip=adv_cfg.clip)  # [N, W]
    cols = {
        "trajectory_id": np.repeat(tids, w),
        "group_id": np.repeat(groups, w),
        "batch": np.repeat(batches, w),
        "step": np.tile(np.arange(w), n),
        "grid_index": np.tile(np.arange(w) + w0, n),
        "mode": [config.mode] * (n * w),
        "increment": ann.increment.reshape(-1),
        "aggregated": ann.aggregated.reshape(-1),
        "turning_point": ann.turning_point.reshape(-1),
        "kept": ann.kept.reshape(-1),
        "step_reward": ann.step_reward.reshape(-1),
        "advantage": adv.reshape(-1),
    }
    summary = {
        "trajectories": n,
        "reward_final_mean": float(rho[:, -1].mean()),
        "reward_initial_mean": float(rho[:, 0].mean()),
        "turning_points": int(ann.turning_point.sum()),
        "kept": int(ann.kept.sum()),
        "zero_advantage_trajectories": int(zero_advantage_mask(adv).sum()),
        "zero_std_groups": float(zero_std_groups(ann.step_reward, groups).mean()),
        "advantage_abs_mean": float(np.abs(adv).mean()),
    }
    if final_only:
        del summary["reward_initial_mean"]  # no completion of s_0 was computed
    return {"columns": cols, "summary": summary}


def run(
    *,
    iteration: int,
    config: AnnotationConfig,
    adv_cfg: AdvantageConfig,
    rewards_uri: str,
    rollouts_uri: str,
    output: str,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Annotate `iteration` into `output` (one writer; the caller finalizes).

    Returns:
        summary metrics (means of the boundary rewards, turning-point counts, …) and `seconds`.
    """
    started = time.perf_counter()
    rewards = read_table(
        rewards_uri,
        "rewards",
        columns=["trajectory_id", "boundary", "score"],
        storage_options=storage_options,
    )
    rollouts = read_table(
        rollouts_uri,
        "rollouts",
        columns=["trajectory_id", "group_id", "batch", "window_start", "window_size"],
        storage_options=storage_options,
    )
    out = annotate_iteration(rewards, rollouts, config, adv_cfg)
    cols = out["columns"]
    cols["iteration"] = [iteration] * len(cols["step"])
    with DatasetWriter(output, "annotations", storage_options=storage_options) as writer:
        writer.write(cols)
    return {**out["summary"], "seconds": time.perf_counter() - started}
