"""Outputs that differ from what later datasets were built from: found and announced after a write.

A rebuilt output equal to the old one has the old hash: nothing is stale then. Otherwise every stored
dataset or checkpoint that recorded the old hash as an input is named, with the command that clears it.
"""

from __future__ import annotations

from tpgrpo.errors import DataError
from tpgrpo.pipeline.context import Log, RunContext
from tpgrpo.pipeline.plan import invalidate_command
from tpgrpo.storage import read_manifest
from tpgrpo.storage.blobs import read_blob_manifest


def _recorded_inputs(ctx: RunContext, uri: str, checkpoint: bool = False) -> dict[str, str] | None:
    """The inputs a finished dataset (or checkpoint) records; None when unfinished or unreadable."""
    try:
        if checkpoint:
            return read_blob_manifest(uri, ctx.storage_options).inputs
        return read_manifest(uri, ctx.storage_options).inputs
    except DataError:
        return None


def _consumers(
    ctx: RunContext, stage: str, iteration: int, key: str, mode: str
) -> list[tuple[str, bool, str]]:
    """(uri, is a checkpoint, input name) of everything stored that reads the output of `stage`."""
    layout, own_key, own_mode = ctx.layout, ctx.reward_key(), ctx.cfg.reward.mode
    i = iteration
    if stage == "rollout":
        keys = sorted({*layout.list_rewards(i), own_key})
        out = [(layout.branches(i), False, "rollouts"), (layout.updates(i), False, "rollouts")]
        out += [
            (layout.annotations(i, k, m), False, "rollouts")
            for k in keys
            for m in layout.list_annotations(i, k)
        ]
        return [*out, (layout.checkpoint(i + 1), True, "rollouts")]
    if stage == "branch":
        return [(layout.rewards(i, k), False, "branches") for k in layout.list_rewards(i)]
    if stage == "score":
        return [(layout.annotations(i, key, m), False, "rewards") for m in layout.list_annotations(i, key)]
    if stage == "annotate":
        if (key, mode) != (own_key, own_mode):
            return []
        return [(layout.updates(i), False, "annotations"), (layout.checkpoint(i + 1), True, "annotations")]
    # update i wrote checkpoint i + 1
    k = i + 1
    out = [(layout.rollouts(k), False, "checkpoint"), (layout.updates(k), False, "checkpoint")]
    out.append((layout.checkpoint(k + 1), True, "checkpoint"))
    for name, reward_key in layout.list_evals():
        if name == f"iter={k:04d}" or name.startswith(f"iter={k:04d}."):
            out.append((layout.eval(name, reward_key), False, "checkpoint"))
    return out


def report_stale_consumers(
    ctx: RunContext, stage: str, iteration: int, new_hash: str, log: Log, key: str = "", mode: str = ""
) -> list[str]:
    """After `stage` wrote an output with hash `new_hash`: the stored datasets and checkpoints that
    were built from another version of it (now stale), announced through `log` with the command that
    invalidates them. A rebuilt output equal to the old one has the old hash: nothing is stale then.

    Returns:
        `list[str]`: the stale consumers' URIs (empty when none).
    """
    stale = []
    for uri, checkpoint, name in _consumers(ctx, stage, iteration, key, mode):
        recorded = _recorded_inputs(ctx, uri, checkpoint)
        if recorded is not None and name in recorded and recorded[name] != new_hash:
            stale.append(uri)
    if not stale:
        return stale
    prefix = ctx.layout.run_dir.rstrip("/") + "/"
    written = {
        "rollout": ctx.layout.rollouts(iteration),
        "branch": ctx.layout.branches(iteration),
        "score": ctx.layout.rewards(iteration, key) if key else "",
        "annotate": ctx.layout.annotations(iteration, key, mode) if key and mode else "",
        "update": ctx.layout.checkpoint(iteration + 1),
    }[stage].removeprefix(prefix)
    names = ", ".join(u.removeprefix(prefix) for u in stale[:4]) + (" …" if len(stale) > 4 else "")
    if stage == "update":
        fix = invalidate_command(ctx, iteration + 1, None)
    elif stage in ("score", "annotate") and key != ctx.reward_key():
        fix = (
            f"tpgrpo annotate --run {ctx.layout.run_id} --reward {key} --mode all --iters {iteration} --force"
        )
    else:
        fix = invalidate_command(ctx, iteration, stage)
    log(
        f"warning: {written} differs from the one it replaced: {len(stale)} later dataset(s) and "
        f"checkpoint(s) were built from the old one and are now stale ({names}); clear them and "
        f"everything built on them with: {fix} (add --yes), then train again"
    )
    return stale
