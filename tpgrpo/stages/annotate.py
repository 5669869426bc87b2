"""Stage 4, annotate: step rewards, turning points and advantages from stored scores (SPEC §4–§6).

Pure CPU work on the `rewards` and `rollouts` datasets: any reward mode or ablation of a stored
run is a re-annotation, seconds of compute, no sampling.

Several rewards (`advantage.weights` naming stored rewards, or the components of a `weighted`
reward, whose scores its `details` keep): with `advantage.aggregate: reward` the weighted sum of
the rewards is annotated as one reward; with `aggregate: advantage` each reward is annotated on its
own (its own turning points, balancing and step rewards), normalised in its group, and the
advantages are summed with the weights, then clipped. The stored `increment`, `aggregated` and
`step_reward` are then the weighted sums of the rewards' own (the first two are those of the summed
reward), `turning_point` and `kept` flag a step that is one for any of the rewards.
`advantage.best_of_n` then zeroes the advantages of all but the `n/2` best and `n/2` worst
trajectories of each group, ranked by final reward (or by aggregated final advantage).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from tpgrpo.algorithm import (
    Annotation,
    AnnotationConfig,
    advantages,
    aggregate_advantages,
    annotate,
    best_of_n_mask,
    zero_advantage_mask,
    zero_std_groups,
)
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


def stored_reward_keys(adv_cfg: AdvantageConfig) -> list[str]:
    """The stored rewards (`rewards/<key>`) an annotation combines besides the annotated one."""
    return sorted(adv_cfg.weights) if adv_cfg.weights else []


def _rho(rewards: Any, tids: np.ndarray, w: int, mode: str, what: str) -> tuple[np.ndarray, bool]:
    """ρ `[N, W+1]` of a rewards table, and whether only final images were scored (then ρ_W is
    broadcast: only flow_grpo can be annotated from it)."""
    final_only = set(rewards.column("boundary").to_pylist()) == {w}  # run without completions
    if not final_only:
        return boundary_rewards(rewards, tids, w + 1), False  # [N, W+1]
    if mode != "flow_grpo":
        raise DataError(
            f"this iteration scored only final images (branch.completions=false){what}: mode {mode!r} "
            "needs intermediate rewards; only flow_grpo can be annotated (branch.audit_every=K completes "
            "every K-th iteration of such a run)"
        )
    final = boundary_rewards(rewards, tids, w + 1, only=w)  # [N]
    return np.repeat(final[:, None], w + 1, axis=1), True  # [N, W+1]: only ρ_W is known


def weighted_components(rewards: Any) -> dict[str, tuple[float, Any]]:
    """The components of a `weighted` reward's scores, from their `details`: `{key: (weight, table)}`
    with one `trajectory_id, boundary, score` table per component; empty when the scores are no
    weighted reward's.

    Raises:
        DataError: the rows disagree on the components or their weights.
    """
    import pyarrow as pa

    if "details" not in rewards.column_names or rewards.num_rows == 0:
        return {}
    cols: dict[str, list[float]] = {}
    weights: dict[str, float] = {}
    for i, text in enumerate(rewards.column("details").to_pylist()):
        details = json.loads(text) if text else None
        parts = details.get("components") if isinstance(details, dict) else None
        if not isinstance(parts, dict):
            if i == 0:
                return {}
            raise DataError("the rewards mix rows with and without weighted components; rescore them")
        if i == 0:
            weights = {k: float(v["weight"]) for k, v in parts.items()}
            cols = {k: [] for k in parts}
        if set(parts) != set(cols) or any(float(parts[k]["weight"]) != weights[k] for k in parts):
            raise DataError("the rewards' rows disagree on the weighted components or weights; rescore them")
        for k in cols:
            cols[k].append(float(parts[k]["score"]))
    ids, bounds = rewards.column("trajectory_id"), rewards.column("boundary")
    return {
        k: (weights[k], pa.table({"trajectory_id": ids, "boundary": bounds, "score": pa.array(v)}))
        for k, v in cols.items()
    }


def reward_components(
    rewards: Any, stored: Mapping[str, Any], adv_cfg: AdvantageConfig, tids: np.ndarray, w: int, mode: str
) -> list[tuple[str, float, np.ndarray, bool]]:
    """The rewards an annotation combines: `(key, weight, ρ [N, W+1], final only)` each.

    `advantage.weights` set: those stored rewards (`stored`, by key). Otherwise, with
    `aggregate: advantage`, the components of a weighted reward; else the annotated reward alone.
    """
    if adv_cfg.weights:
        out = []
        for key, weight in adv_cfg.weights.items():
            if key not in stored:
                raise DataError(
                    f"advantage.weights names reward {key!r}, which this iteration has not stored "
                    f"(rewards/{key}); score the run's images with it first: tpgrpo rescore --reward ..."
                )
            rho, final = _rho(stored[key], tids, w, mode, f" for reward {key!r}")
            out.append((key, float(weight), rho, final))
        return out
    if adv_cfg.aggregate == "advantage":
        parts = weighted_components(rewards)
        if parts:
            return [
                (key, weight, *_rho(table, tids, w, mode, f" for component {key!r}"))
                for key, (weight, table) in parts.items()
            ]
    rho, final = _rho(rewards, tids, w, mode, "")
    return [("", 1.0, rho, final)]


def _combine(anns: list[Annotation], weights: list[float]) -> Annotation:
    """One annotation of several rewards: weighted sums of the values, flags of any reward."""

    def wsum(name: str) -> np.ndarray:
        return np.sum([wt * getattr(a, name) for a, wt in zip(anns, weights, strict=True)], axis=0)

    return Annotation(
        increment=wsum("increment"),  # [N, W]
        aggregated=wsum("aggregated"),  # [N, W]
        trend=wsum("trend"),  # [N]
        turning_point=np.logical_or.reduce([a.turning_point for a in anns]),  # [N, W]
        kept=np.logical_or.reduce([a.kept for a in anns]),  # [N, W]
        step_reward=wsum("step_reward"),  # [N, W]
    )


def annotate_iteration(
    rewards: Any,
    rollouts: Any,
    config: AnnotationConfig,
    adv_cfg: AdvantageConfig,
    stored: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Annotate one iteration; returns the columns of the `annotations` dataset plus `summary`.

    Args:
        stored (`Mapping[str, pa.Table]`, *optional*): the stored rewards `advantage.weights` names,
            by key (`rewards/<key>` tables with `trajectory_id, boundary, score`).
    """
    rollouts = rollouts.sort_by("trajectory_id")
    tids = rollouts.column("trajectory_id").to_numpy()
    groups = rollouts.column("group_id").to_numpy()
    batches = rollouts.column("batch").to_numpy()
    w0 = int(rollouts.column("window_start")[0].as_py())
    w = int(rollouts.column("window_size")[0].as_py())
    n = len(tids)
    parts = reward_components(rewards, stored or {}, adv_cfg, tids, w, config.mode)
    weights = [wt for _, wt, _, _ in parts]
    final_only = any(final for _, _, _, final in parts)
    if len(parts) == 1 and weights[0] == 1.0:
        rho = parts[0][2]  # [N, W+1] the annotated reward, as it is stored
    else:
        rho = np.sum([wt * r for _, wt, r, _ in parts], axis=0)  # [N, W+1]
    std_scope, clip = adv_cfg.std_scope, adv_cfg.clip
    if adv_cfg.aggregate == "advantage" and len(parts) > 1:
        anns = [annotate(r, batches, config, trajectory_ids=tids) for _, _, r, _ in parts]
        ann = _combine(anns, weights)
        adv = aggregate_advantages(
            [a.step_reward for a in anns], weights, groups, std_scope=std_scope, clip=clip
        )  # [N, W]
        final_score = np.sum(
            [
                wt * advantages(r[:, -1:], groups, std_scope=std_scope, clip=None)[:, 0]
                for _, wt, r, _ in parts
            ],
            axis=0,
        )  # [N] aggregated final advantage (best-of-n's ranking)
    else:
        ann = annotate(rho, batches, config, trajectory_ids=tids)
        adv = advantages(ann.step_reward, groups, std_scope=std_scope, clip=clip)  # [N, W]
        final_score = rho[:, -1]  # [N]
    if final_only:
        ann.increment[:] = np.nan  # not computed without completions
        ann.aggregated[:] = np.nan
    dropped = 0
    if adv_cfg.best_of_n is not None:
        keep = best_of_n_mask(np.asarray(final_score, dtype=np.float64), groups, adv_cfg.best_of_n, tids)
        adv[~keep] = 0.0  # not trained (advantage.skip_zero, checked with the config)
        dropped = int((~keep).sum())
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
    if len(parts) > 1 or adv_cfg.weights:
        summary["rewards_combined"] = len(parts)
        for key, _, r, _ in parts:
            summary[f"reward_final_mean.{key}"] = float(r[:, -1].mean())
    if adv_cfg.best_of_n is not None:
        summary["best_of_n_dropped"] = dropped
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
    stored_uris: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Annotate `iteration` into `output` (one writer; the caller finalizes).

    Args:
        stored_uris (`Mapping[str, str]`, *optional*): `rewards/<key>` of each reward
            `advantage.weights` names (`stored_reward_keys`).

    Returns:
        summary metrics (means of the boundary rewards, turning-point counts, …) and `seconds`.
    """
    started = time.perf_counter()
    # a weighted reward's components live in its details: read them only when they are combined
    details = adv_cfg.aggregate == "advantage" and not adv_cfg.weights
    rewards = read_table(
        rewards_uri,
        "rewards",
        columns=["trajectory_id", "boundary", "score", *(["details"] if details else [])],
        storage_options=storage_options,
    )
    stored = {
        key: read_table(
            uri, "rewards", columns=["trajectory_id", "boundary", "score"], storage_options=storage_options
        )
        for key, uri in (stored_uris or {}).items()
    }
    rollouts = read_table(
        rollouts_uri,
        "rollouts",
        columns=["trajectory_id", "group_id", "batch", "window_start", "window_size"],
        storage_options=storage_options,
    )
    out = annotate_iteration(rewards, rollouts, config, adv_cfg, stored)
    cols = out["columns"]
    cols["iteration"] = [iteration] * len(cols["step"])
    with DatasetWriter(output, "annotations", storage_options=storage_options) as writer:
        writer.write(cols)
    return {**out["summary"], "seconds": time.perf_counter() - started}
