"""One iteration's steps as plain functions: plan (skip / redo / write), run shards, finalize.

The names the flows, `tpgrpo stage` and the benchmarks use, gathered from the modules that define
them. Every step is idempotent: a finished output whose manifest matches its inputs' hashes and the
stage's config hash is skipped; debris of a crash is cleared and redone; a finished output built
from other inputs is refused unless `force`. Stages never build paths: every URI comes from
`RunLayout`, through the lineage table (`pipeline.lineage`).
"""

from __future__ import annotations

from tpgrpo.pipeline.annotate import annotate_step
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.lineage import STAGES
from tpgrpo.pipeline.plan import Plan, plan, prepare, stale_hint
from tpgrpo.pipeline.shards import SHARD_FUNCS, finalize, sharded_step
from tpgrpo.pipeline.stage import run_stage
from tpgrpo.pipeline.stale import report_stale_consumers
from tpgrpo.pipeline.start import check_worker, init_run
from tpgrpo.pipeline.update import UPDATE_COLUMNS, UpdatePlan, prepare_update, update_step

__all__ = [
    "SHARD_FUNCS",
    "STAGES",
    "UPDATE_COLUMNS",
    "Log",
    "Plan",
    "RunContext",
    "UpdatePlan",
    "annotate_step",
    "check_worker",
    "finalize",
    "init_run",
    "plan",
    "prepare",
    "prepare_update",
    "quiet",
    "report_stale_consumers",
    "run_stage",
    "sharded_step",
    "stale_hint",
    "update_step",
]
