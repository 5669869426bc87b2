"""The update step: train on one iteration, write its `updates` dataset and checkpoint K + 1.

Skip / redo is decided for both outputs together (`prepare_update`); data-parallel ranks share the
decision, train on their slices and let rank 0 write (`update_step`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tpgrpo.errors import DataError
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.lineage import stage_config_hash
from tpgrpo.pipeline.plan import input_hashes, stale_hint
from tpgrpo.pipeline.stale import report_stale_consumers
from tpgrpo.schemas.updates import BY_STEP
from tpgrpo.stages import update
from tpgrpo.stages.checkpoints import load_checkpoint, write_checkpoint
from tpgrpo.storage import prepare_output, write_dataset
from tpgrpo.storage.blobs import BlobManifest, blob_state, clear_blobs, read_blob_manifest

UPDATE_COLUMNS = (
    "iteration",
    "optimizer_step",
    "loss",
    "policy_loss",
    "kl",
    "clip_frac",
    "approx_kl",
    "ratio_mean",
    "grad_norm",
    "lr",
    "epoch",
    "samples",
    *BY_STEP,
)


@dataclass(frozen=True)
class UpdatePlan:
    """The update of one iteration: its inputs' hashes, config hash, annotations, and whether done."""

    inputs: dict[str, str]
    config_hash: str
    annotations: str
    done: BlobManifest | None = None  # the finished checkpoint's manifest; None: outputs cleared, train


def prepare_update(ctx: RunContext, iteration: int, force: bool = False) -> UpdatePlan:
    """Done when the `updates` dataset and checkpoint `iteration + 1` exist and match the inputs;
    otherwise both are cleared for a redo (checkpoint first, so a crash leaves debris, never a
    finished-looking checkpoint of other inputs).

    Raises:
        DataError: the checkpoint was trained from other inputs or config (and not `force`).
    """
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    key, mode = ctx.reward_key(), cfg.reward.mode
    annotations = layout.annotations(iteration, key, mode)
    inputs = input_hashes(ctx, "update", iteration, key, mode)  # rollouts, annotations, checkpoint K
    chash = stage_config_hash(cfg, "update")
    ckpt_out, updates_out = layout.checkpoint(iteration + 1), layout.updates(iteration)
    state = blob_state(ckpt_out, opts)
    if state == "done":
        existing = read_blob_manifest(ckpt_out, opts)
        same = existing.inputs == inputs and existing.config_hash == chash
        if not same and not force:
            raise DataError(
                f"{ckpt_out} was trained from other inputs or config than this run's: "
                + stale_hint(ctx, "update", iteration)
            )
        upd = prepare_output(
            updates_out,
            inputs=inputs,
            config_hash=chash,
            schema_name="updates",
            storage_options=opts,
            stale_hint=stale_hint(ctx, "update", iteration),
        )
        if same and upd == "skip" and not force:
            return UpdatePlan(inputs, chash, annotations, done=existing)
    if state != "missing":
        clear_blobs(ckpt_out, opts)
    prepare_output(
        updates_out, inputs=inputs, config_hash=chash, schema_name="updates", force=True, storage_options=opts
    )
    return UpdatePlan(inputs, chash, annotations)


def update_step(
    ctx: RunContext,
    iteration: int,
    force: bool = False,
    log: Log = quiet,
    dp: update.DataParallel | None = None,
) -> BlobManifest:
    """Train on `iteration`: writes its `updates` dataset and checkpoint `iteration + 1`.

    Skipped when both are done (see `prepare_update`). Data-parallel (`dp`, under torchrun): rank 0
    decides and clears, every rank trains on its slice of each step, rank 0 writes both outputs;
    every rank returns the checkpoint's manifest.
    """
    dp = dp or update.DataParallel()
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    up: UpdatePlan = dp.broadcast(prepare_update(ctx, iteration, force) if dp.rank == 0 else None)
    if up.done is not None:
        log(f"update it{iteration}: done, skipped")
        return up.done

    from tpgrpo.models.state import seeded_rng_state

    policy = ctx.policy()
    optimizer, ema, train_state, _ = load_checkpoint(
        layout.checkpoint(iteration), cfg, policy, storage_options=opts
    )
    started = time.perf_counter()
    rows, stats = update.run(
        cfg,
        policy,
        optimizer,
        ema,
        train_state,
        iteration=iteration,
        rollouts_uri=layout.rollouts(iteration),
        annotations_uri=up.annotations,
        storage_options=opts,
        dp=dp,
    )
    if dp.rank != 0:  # every rank holds the same rows and weights: one writes them
        return dp.broadcast(None)
    train_state.iteration = iteration + 1
    train_state.rng = seeded_rng_state(cfg.seed, iteration + 1)
    metrics = {**update.summarize(rows), "forward_samples": stats["forward_samples"]}
    write_dataset(
        layout.updates(iteration),
        "updates",
        {k: [r[k] for r in rows] for k in UPDATE_COLUMNS},
        inputs=up.inputs,
        config_hash=up.config_hash,
        model_evals=int(stats["model_evals"]),
        metrics=metrics,
        timings={"compute_s": time.perf_counter() - started},
        storage_options=opts,
    )
    manifest = write_checkpoint(
        layout.checkpoint(iteration + 1),
        policy,
        optimizer,
        ema,
        train_state,
        inputs=up.inputs,
        config_hash=up.config_hash,
        storage_options=opts,
    )
    log(f"update it{iteration}: {len(rows)} optimizer steps, mean loss {metrics.get('loss_mean', 0.0):.4g}")
    report_stale_consumers(ctx, "update", iteration, manifest.hash, log)
    return dp.broadcast(manifest)
