"""One stage of one iteration in this process: the `tpgrpo stage` command's path."""

from __future__ import annotations

from tpgrpo.config import SpecData
from tpgrpo.errors import UserError
from tpgrpo.pipeline.annotate import annotate_step
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.lineage import STAGES
from tpgrpo.pipeline.shards import SHARD_FUNCS, sharded_step
from tpgrpo.pipeline.update import update_step
from tpgrpo.storage import Manifest
from tpgrpo.storage.blobs import BlobManifest


def run_stage(
    ctx: RunContext,
    stage: str,
    iteration: int,
    force: bool = False,
    log: Log = quiet,
    spec: SpecData | None = None,
    mode: str | None = None,
) -> Manifest | BlobManifest:
    """Run one stage of one iteration in this process (the `tpgrpo stage` command)."""
    if stage in SHARD_FUNCS:
        return sharded_step(ctx, stage, iteration, force, log, spec=spec)
    if stage == "annotate":
        return annotate_step(ctx, iteration, force, log, spec=spec, mode=mode)
    if stage == "update":
        return update_step(ctx, iteration, force, log)
    raise UserError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
