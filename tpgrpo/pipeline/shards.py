"""The sharded model stages (rollout, branch, score): one shard's work, and the finished dataset.

A flow maps the shards over its task runner (`flows.train`); `sharded_step` runs them one after
another in this process (`tpgrpo stage`). Each shard writes its own part files; `finalize` writes
the manifest with the shards' summed statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tpgrpo.config import SpecData
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.plan import Plan, plan, prepare
from tpgrpo.pipeline.stale import report_stale_consumers
from tpgrpo.stages import branch, rollout, score
from tpgrpo.stages.checkpoints import load_adapter
from tpgrpo.stages.common import shard_groups
from tpgrpo.storage import Manifest, finalize_dataset, read_manifest


def rollout_shard(
    ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: SpecData | None = None
) -> dict[str, float]:
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(p.iteration), policy, storage_options=ctx.storage_options)
    return rollout.run_shard(
        ctx.cfg,
        policy,
        run_id=ctx.layout.run_id,
        iteration=p.iteration,
        prompts_uri=ctx.layout.prompts(),
        output=p.output,
        shard=shard,
        num_shards=num_shards,
        storage_options=ctx.storage_options,
    )


def branch_shard(
    ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: SpecData | None = None
) -> dict[str, float]:
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(p.iteration), policy, storage_options=ctx.storage_options)
    return branch.run_shard(
        ctx.cfg,
        policy,
        iteration=p.iteration,
        rollouts_uri=ctx.layout.rollouts(p.iteration),
        output=p.output,
        shard=shard,
        num_shards=num_shards,
        storage_options=ctx.storage_options,
    )


def score_shard(
    ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: SpecData | None = None
) -> dict[str, float]:
    groups = ctx.cfg.rollout.groups
    g = ctx.cfg.rollout.group_size
    tids = [gr * g + m for gr in shard_groups(groups, shard, num_shards) for m in range(g)]
    return score.run_shard(
        ctx.reward(spec),
        iteration=p.iteration,
        rollouts_uri=ctx.layout.rollouts(p.iteration),
        branches_uri=ctx.layout.branches(p.iteration),
        output=p.output,
        trajectory_ids=tids if num_shards > 1 else None,
        shard=shard,
        storage_options=ctx.storage_options,
    )


SHARD_FUNCS: dict[str, Callable[..., dict[str, float]]] = {
    "rollout": rollout_shard,
    "branch": branch_shard,
    "score": score_shard,
}


def finalize(
    ctx: RunContext, p: Plan, stats: list[dict[str, float]], log: Log = quiet, spec: SpecData | None = None
) -> Manifest:
    """Write the manifest of a sharded stage, with its shards' summed stats; announces the stored
    datasets built from another version of this output (`report_stale_consumers`)."""
    total = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0]} if stats else {}
    metrics: dict[str, Any] = {k: v for k, v in total.items() if k not in ("seconds", "model_evals")}
    if p.stage == "branch":  # issue 18: how the completions were estimated (no part of the hash)
        metrics["estimator"] = ctx.cfg.branch.estimator_label
    if p.stage == "score" and total.get("images"):
        metrics["score_mean"] = total["score_sum"] / total["images"]
        if total.get("strict_count"):
            metrics["strict_mean"] = total["strict_sum"] / total["strict_count"]
    manifest = finalize_dataset(
        p.output,
        p.schema,
        inputs=p.inputs,
        config_hash=p.config_hash,
        model_evals=int(total.get("model_evals", 0)),
        metrics=metrics,
        timings={"compute_s": total.get("seconds", 0.0)},
        shards=len(stats),
        storage_options=ctx.storage_options,
    )
    key = ctx.reward_key(spec) if p.stage == "score" else ""
    report_stale_consumers(ctx, p.stage, p.iteration, manifest.hash, log, key=key)
    return manifest


def sharded_step(
    ctx: RunContext,
    stage: str,
    iteration: int,
    force: bool = False,
    log: Log = quiet,
    spec: SpecData | None = None,
) -> Manifest:
    """A sharded stage in this process (shards one after another): the CLI's path."""
    p = plan(ctx, stage, iteration, spec=spec)
    if prepare(ctx, p, force) == "skip":
        log(f"{stage} it{iteration}: done, skipped")
        return read_manifest(p.output, ctx.storage_options)
    n = ctx.cfg.rollout.shards
    manifest = finalize(ctx, p, [SHARD_FUNCS[stage](ctx, p, s, n, spec) for s in range(n)], log, spec)
    log(f"{stage} it{iteration}: {manifest.rows} rows, {manifest.model_evals} model evaluations")
    return manifest
