"""The `rescore` flow: score a run's stored branch images with another reward, then re-annotate.

Nothing is generated: per iteration, the score step reads the stored `branches` images and writes
`rewards/<new_key>`; the annotate step writes `annotations/<new_key>/<mode>` for each requested
mode. The run's original datasets are only read (their checksums never change), and the run's own
reward key is refused as a target, so a rescore can never replace what an update trained on.
Like training, it holds the run lock and is idempotent: finished outputs are skipped, crash debris
is redone, outputs built from other inputs are refused unless `force`. Like training, the reward
model is built only by tasks on the configured task runner (the GPU workers of a Dask cluster): the
flow's process checks the spec's name and parameters, never loads it.

In the Prefect UI: the flow run `rescore-<run id>`, task runs `score-it<I>` and
`annotate-it<I>-<mode>`, a progress bar over the iterations and a table of the results, one row per
iteration and mode (`<run>-rescore-<reward key>`, `…-progress`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tpgrpo.config import SpecData
from tpgrpo.flows import names
from tpgrpo.flows.artifacts import Progress, artifact_key, publish_table, rescore_table
from tpgrpo.flows.runner import task_runner_for
from tpgrpo.flows.train import check_task, retry_on_io
from tpgrpo.pipeline import steps
from tpgrpo.pipeline.context import RunContext
from tpgrpo.storage import validate_key
from tpgrpo.storage.lock import run_lock

TASK_OPTIONS: dict[str, Any] = dict(
    cache_policy=NO_CACHE, retry_condition_fn=retry_on_io, retry_delay_seconds=2, persist_result=False
)


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="score", task_run_name=names.SCORE, **TASK_OPTIONS)
def score_task(ctx: RunContext, iteration: int, spec: SpecData, force: bool) -> dict[str, Any]:
    manifest = steps.sharded_step(ctx, "score", iteration, force=force, log=_log, spec=spec)
    return {"rows": manifest.rows, "metrics": dict(manifest.metrics)}


@task(name="annotate", task_run_name=names.ANNOTATE_MODE, **TASK_OPTIONS)
def annotate_task(
    ctx: RunContext, iteration: int, spec: SpecData, mode: str, force: bool, key: str | None = None
) -> dict[str, Any]:
    manifest = steps.annotate_step(ctx, iteration, force, _log, spec=spec, mode=mode, key=key)
    return dict(manifest.metrics)


@flow(name="tpgrpo-rescore", flow_run_name=names.RESCORE_RUN, log_prints=True, persist_result=False)
def rescore_flow(
    ctx: RunContext, spec: SpecData, iterations: list[int], modes: list[str], force: bool = False
) -> dict[str, Any]:
    """Prefect flow: score + annotate each iteration with `spec` (see `rescore`); every task goes
    through the task runner, the reward built first by `check-worker`."""
    retries = ctx.cfg.flow.io_retries
    score = score_task.with_options(retries=retries)
    annotate = annotate_task.with_options(retries=retries)
    key = check_task.with_options(retries=retries).submit(ctx, spec, model=False).result()
    out: dict[str, Any] = {"reward_key": key, "iterations": {}}
    run_id = ctx.layout.run_id
    progress = Progress.start(
        artifact_key(run_id, "rescore", key, "progress"),
        len(iterations),
        f"run {run_id}: iterations rescored with {key} of {iterations}",
    )
    for i in iterations:
        scored = score.submit(ctx, i, spec, force).result()
        annotated = {mode: annotate.submit(ctx, i, spec, mode, force).result() for mode in modes}
        out["iterations"][i] = {"score": scored, "annotations": annotated}
        _log(f"iteration {i}: {scored['rows']} scores, mean {scored['metrics'].get('score_mean')}")
        progress.advance()
    publish_table(
        artifact_key(run_id, "rescore", key),
        rescore_table(out),
        f"run {run_id} rescored with {key}: scores and annotations per iteration and mode",
    )
    return out


def rescore(
    ctx: RunContext,
    spec: SpecData,
    *,
    iters: str | None = None,
    modes: list[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Validate everything, then run the rescore flow under the run lock.

    Args:
        ctx: the stored run.
        spec: reward spec text or mapping (`"jpeg"`, `'{"name": "jpeg", "quality": 50}'`).
        iters: `--iters` selection (default: every stored iteration).
        modes: reward modes to annotate (default: the run's mode; `all` for every mode).
        force: replace finished outputs of this reward key built from other inputs.

    Returns:
        `{"reward_key", "iterations": {i: {"score", "annotations"}}, "skipped": {i: reason}}`:
        `skipped` holds the selected iterations whose rollouts or branches are missing or damaged
        (nothing was written for them; the caller names them and fails).

    Raises:
        UserError: bad spec, unknown reward or mode, iterations outside the run, a protected key,
            or the run is locked by another process; from the flow's first task, parameter values
            the reward refuses.
    """
    from tpgrpo.pipeline.catalog import usable_iterations
    from tpgrpo.pipeline.select import check_modes, guard_training_data, parse_reward_spec, select_with_skips

    parsed = parse_reward_spec(spec)
    key = validate_key(ctx.reward_key(parsed))  # unknown names, bad parameters and a key that
    # cannot be a folder name fail here, before any flow starts (the reward is built by the tasks)
    usable, unusable = usable_iterations(ctx, ("rollouts", "branches"))
    iterations, skipped = select_with_skips(
        iters, usable, unusable, run_id=ctx.layout.run_id, what="stored branches"
    )
    chosen = check_modes(modes or [ctx.cfg.reward.mode])
    guard_training_data(ctx, key, chosen, force, spec=parsed)
    result: dict[str, Any] = {"reward_key": key, "iterations": {}}
    if iterations:
        with run_lock(ctx.layout.lock(), ctx.storage_options):
            flow_fn = rescore_flow.with_options(task_runner=task_runner_for(ctx.cfg))
            result = flow_fn(ctx, parsed, iterations, chosen, force)
    result["skipped"] = skipped
    return result


@flow(
    name="tpgrpo-rescore-run",
    flow_run_name=names.RESCORE_DEPLOYMENT_RUN,
    log_prints=True,
    persist_result=False,
)
def rescore_deployment(
    run: str,
    reward: str | dict[str, Any],
    iters: str | int | None = None,
    modes: list[str] | None = None,
    root: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Deployment entrypoint (plain parameters): rescore stored run `run` under `root`.

    `reward` is a name, a JSON text or a mapping (`prefect deployment run --param` parses JSON);
    `iters` as `--iters` (a bare number is one iteration).
    """
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.pipeline.select import skipped_error

    selection = str(iters) if iters is not None else None
    result = rescore(load_run(run, root), reward, iters=selection, modes=modes, force=force)
    for i, reason in sorted(result["skipped"].items()):
        _log(f"skipped iteration {i}: {reason}")
    if result["skipped"]:  # the flow run fails, naming what it skipped
        raise skipped_error(run, result["skipped"], sorted(result["iterations"]))
    return result
