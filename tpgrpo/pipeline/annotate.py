"""The annotate step: turning points, step rewards and advantages of one iteration, from stored scores."""

from __future__ import annotations

from tpgrpo.algorithm import AnnotationConfig
from tpgrpo.config import SpecData
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.plan import plan, prepare
from tpgrpo.pipeline.stale import report_stale_consumers
from tpgrpo.stages import annotate
from tpgrpo.stages.annotate import stored_reward_keys
from tpgrpo.storage import Manifest, finalize_dataset, read_manifest, read_table


def annotate_step(
    ctx: RunContext,
    iteration: int,
    force: bool = False,
    log: Log = quiet,
    spec: SpecData | None = None,
    mode: str | None = None,
    key: str | None = None,
) -> Manifest:
    """Annotate one iteration with `mode` (default: the config's) from the scores of `spec`.

    `key` names the stored scores instead of `spec` (no reward model is built).
    """
    mode = mode or ctx.cfg.reward.mode
    key = key if key is not None else ctx.reward_key(spec)
    p = plan(ctx, "annotate", iteration, spec=spec, mode=mode, key=key)
    if prepare(ctx, p, force) == "skip":
        log(f"annotate it{iteration} ({mode}): done, skipped")
        return read_manifest(p.output, ctx.storage_options)
    r = ctx.cfg.reward
    summary = annotate.run(
        iteration=iteration,
        config=AnnotationConfig(mode=mode, initial_step=r.initial_step, balance=r.balance),
        adv_cfg=ctx.cfg.advantage,
        rewards_uri=ctx.layout.rewards(iteration, key),
        rollouts_uri=ctx.layout.rollouts(iteration),
        output=p.output,
        storage_options=ctx.storage_options,
        stored_uris={k: ctx.layout.rewards(iteration, k) for k in stored_reward_keys(ctx.cfg.advantage)},
    )
    seconds = summary.pop("seconds")
    manifest = finalize_dataset(
        p.output,
        p.schema,
        inputs=p.inputs,
        config_hash=p.config_hash,
        metrics=summary,
        timings={"compute_s": seconds},
        shards=1,
        storage_options=ctx.storage_options,
    )
    log(
        f"annotate it{iteration} ({mode}): {summary['turning_points']} turning points, {summary['kept']} kept"
    )
    report_stale_consumers(ctx, "annotate", iteration, manifest.hash, log, key=key, mode=mode)
    return manifest


def final_only_iterations(ctx: RunContext, iterations: list[int], key: str) -> list[int]:
    """Those of `iterations` whose `key` scores cover only the final images (trained without
    completions and not audited, `branch.audit_every`): the step-level modes cannot annotate them."""
    out = []
    for i in iterations:
        boundaries = read_table(
            ctx.layout.rewards(i, key), "rewards", columns=["boundary"], storage_options=ctx.storage_options
        )
        if len(set(boundaries.column("boundary").to_pylist())) == 1:
            out.append(i)
    return out
