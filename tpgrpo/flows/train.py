"""The `train` flow: iterations of rollout → branch → score → annotate → update, resumable.

Wiring only: each stage is a Prefect task around a step of `tpgrpo.pipeline.steps`. Every task
that loads a model or a reward model goes through the configured task runner (threads locally, a
Dask cluster with `flow.task_runner: dask`): the first, `check-worker`, checks the device and builds
the reward there; the sharded model stages map their shards over it; annotate and update are
submitted to it, the update as a torchrun job of `update.ddp_procs` processes when that is > 1
(`flows/ddp_update.py`, docs/scale-out.md). The flow's process only plans (`prepare`) and writes
manifests (`finalize`), never loading a model. Tasks retry only on I/O errors (storage, network); a
compute error fails the run at once. Resuming is the stages' own idempotence — never Prefect's
result cache: run the same command again and finished stages are skipped, debris is redone.

The deployment entrypoint (`train_deployment`) announces a finished run with the Prefect event
`tpgrpo.run.trained`, which triggers the `evaluate` deployment of `prefect.yaml`.

What the Prefect UI shows (`flows.artifacts`, `flows.names`): the flow run `train-<run id>`, task
runs named by stage, iteration and shard, a metrics table per stage and iteration, a markdown summary
per iteration, shard and run progress bars, and a link to the run's report.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.logging import get_run_logger

from tpgrpo.config import Config, SpecData
from tpgrpo.flows import names
from tpgrpo.flows.artifacts import (
    Progress,
    artifact_key,
    eval_row,
    iteration_markdown,
    metrics_table,
    publish_link,
    publish_markdown,
    publish_table,
    report_link,
    stage_key,
    stage_progress_key,
    summary_key,
)
from tpgrpo.flows.runner import task_runner_for
from tpgrpo.pipeline import steps
from tpgrpo.pipeline.context import RunContext
from tpgrpo.pipeline.lineage import SHARDED_STAGES, STAGES
from tpgrpo.pipeline.plan import Plan
from tpgrpo.pipeline.start import preflight
from tpgrpo.storage import drop_latents, read_manifest
from tpgrpo.storage.lock import run_lock
from tpgrpo.tracking import Tracker, run_tracker


def retry_on_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a task only when it failed on I/O (storage or network), never on a compute error."""
    try:
        state.result()
    except (OSError, TimeoutError, ConnectionError):
        return True
    except BaseException:
        return False
    return False


def _log(message: str) -> None:
    get_run_logger().info(message)


_TASK = dict(
    cache_policy=NO_CACHE, retry_condition_fn=retry_on_io, retry_delay_seconds=2, persist_result=False
)


@task(name="check-worker", task_run_name=names.CHECK, **_TASK)  # type: ignore[call-overload]
def check_task(ctx: RunContext, spec: SpecData | None = None, model: bool = True) -> str:
    return steps.check_worker(ctx, spec, model=model)


@task(name="init-run", task_run_name=names.INIT, **_TASK)  # type: ignore[call-overload]
def init_task(ctx: RunContext) -> None:
    steps.init_run(ctx, _log)


@task(name="prepare", task_run_name=names.PREPARE, **_TASK)  # type: ignore[call-overload]
def prepare_task(ctx: RunContext, stage: str, iteration: int) -> tuple[Plan, str]:
    p = steps.plan(ctx, stage, iteration)
    return p, steps.prepare(ctx, p)


@task(name="shard", task_run_name=names.shard_run_name, **_TASK)  # type: ignore[call-overload]
def shard_task(ctx: RunContext, p: Plan, shard: int, num_shards: int) -> dict[str, float]:
    return steps.SHARD_FUNCS[p.stage](ctx, p, shard, num_shards)


@task(name="finalize", task_run_name=names.FINALIZE, **_TASK)  # type: ignore[call-overload]
def finalize_task(ctx: RunContext, p: Plan, stats: list[dict[str, float]]) -> dict[str, Any]:
    manifest = steps.finalize(ctx, p, stats, _log)
    return {"rows": manifest.rows, "model_evals": manifest.model_evals, "metrics": manifest.metrics}


@task(name="annotate", task_run_name=names.ANNOTATE, **_TASK)  # type: ignore[call-overload]
def annotate_task(ctx: RunContext, iteration: int) -> dict[str, Any]:
    return dict(steps.annotate_step(ctx, iteration, log=_log).metrics)


@task(name="update", task_run_name=names.UPDATE, **_TASK)  # type: ignore[call-overload]
def update_task(ctx: RunContext, iteration: int) -> dict[str, Any]:
    """Train on `iteration`; returns the metrics of its `updates` dataset (`loss_mean`, …)."""
    if ctx.cfg.update.ddp_procs > 1:  # data-parallel: torchrun processes on this machine
        from tpgrpo.flows.ddp_update import launch

        launch(ctx, iteration, log=_log)
    else:
        steps.update_step(ctx, iteration, log=_log)
    return dict(read_manifest(ctx.layout.updates(iteration), ctx.storage_options).metrics)


def _publish_stage(run_id: str, iteration: int, stage: str, metrics: dict[str, Any], what: str) -> None:
    """The metrics table of a finished stage (`<run>-it<I>-<stage>`); `what` says what it holds."""
    table = metrics_table(metrics)
    publish_table(
        stage_key(run_id, iteration, stage),
        table,
        f"{stage} of iteration {iteration} of run {run_id}: {what}",
    )


def sharded_stage(ctx: RunContext, stage: str, iteration: int) -> None:
    """prepare → shards (mapped over the task runner) → finalize.

    Publishes the shards' progress as they finish and the finished stage's metrics table; a
    skipped stage publishes nothing (its table from the flow run that built it stays the latest).
    """
    retries = ctx.cfg.flow.io_retries  # retry_on_io decides which failures are retried
    p, decision = prepare_task.with_options(name=f"prepare-{stage}", retries=retries)(ctx, stage, iteration)
    if decision == "skip":
        _log(f"{stage} it{iteration}: done, skipped")
        return
    n = ctx.cfg.rollout.shards
    run_id = ctx.layout.run_id
    progress = Progress.start(
        stage_progress_key(run_id, iteration, stage), n, f"{stage} of iteration {iteration}: shards finished"
    )
    futures = shard_task.with_options(name=f"{stage}-shard", retries=retries).map(
        unmapped(ctx), unmapped(p), range(n), unmapped(n)
    )
    shard_of = {f.task_run_id: s for s, f in enumerate(futures)}
    stats: dict[int, dict[str, float]] = {}
    for future in as_completed(list(futures)):  # the first failed shard fails the stage
        stats[shard_of[future.task_run_id]] = future.result()
        progress.advance()
    out = finalize_task.with_options(name=f"finalize-{stage}", retries=retries)(
        ctx, p, [stats[s] for s in range(n)]
    )
    _log(
        f"{stage} it{iteration}: {out['rows']} rows, {out['model_evals']} model evaluations, {out['metrics']}"
    )
    metrics = {"rows": out["rows"], "model_evals": out["model_evals"], **out["metrics"]}
    _publish_stage(run_id, iteration, stage, metrics, "rows, model evaluations, manifest metrics")


def train_iterations(ctx: RunContext, iterations: int) -> dict[str, Any]:
    """The body of the flow: init, then every unfinished stage of iterations 0 … N-1."""
    retries = ctx.cfg.flow.io_retries
    tracker = run_tracker(ctx)  # before any work: a missing tracking package is a config error
    try:
        return _iterations(ctx, iterations, retries, tracker)
    finally:
        if tracker is not None:
            tracker.close()


def _track(tracker: Tracker | None, iteration: int) -> None:
    """Send a finished iteration (and new evaluations) to the trackers; their failure never stops
    training (`tpgrpo track` sends what was missed)."""
    if tracker is None:
        return
    try:
        tracker.log_iterations([iteration])
        tracker.log_evals()
    except Exception as err:  # a tracking server down must not cost the run
        _log(f"tracking iteration {iteration} failed ({err}); send it later with tpgrpo track --run RUN")


def _stored_evals(ctx: RunContext, iteration: int) -> list[dict[str, Any]]:
    """The stored evaluations of checkpoints `iteration` and `iteration + 1`, as `eval_row`s; none
    when they cannot be listed (logged: they only feed the iteration's summary artifact)."""
    from tpgrpo.pipeline.catalog import eval_records

    try:
        records = eval_records(ctx)
    except Exception as err:  # a summary artifact must never cost the run
        get_run_logger().warning(f"evaluations left out of iteration {iteration}'s summary: {err}")
        return []
    return [
        eval_row(e.checkpoint, e.name, e.reward_key, e.rows, e.metrics)
        for e in records
        if e.checkpoint in (iteration, iteration + 1)
    ]


def _publish_report_link(ctx: RunContext) -> None:
    """The link to the run's report (see `artifacts.report_link`)."""
    layout = ctx.layout
    uri, description = report_link(layout.run_dir, layout.run_id, layout.root)
    publish_link(artifact_key(layout.run_id, "report"), uri, f"report of run {layout.run_id}", description)


def _iterations(ctx: RunContext, iterations: int, retries: int, tracker: Tracker | None) -> dict[str, Any]:
    # every task that loads a model goes through the task runner (.submit), so on a Dask cluster the
    # model work runs on the workers (GPUs), not in the flow's process; first the worker's own checks
    check_task.with_options(retries=retries).submit(ctx).result()
    init_task.with_options(retries=retries).submit(ctx).result()
    run_id = ctx.layout.run_id
    _publish_report_link(ctx)
    progress = Progress.start(
        artifact_key(run_id, "progress"),
        iterations * len(STAGES),
        f"run {run_id}: stages finished (skipped ones included) of iterations 0 to {iterations - 1}",
    )
    timings: dict[str, float] = {}
    for i in range(iterations):
        seconds: dict[str, float] = {}  # wall time of each stage of iteration i in this flow run
        for stage in SHARDED_STAGES:
            started = time.perf_counter()
            sharded_stage(ctx, stage, i)
            seconds[stage] = time.perf_counter() - started
            progress.advance()
        started = time.perf_counter()
        metrics = annotate_task.with_options(retries=retries).submit(ctx, i).result()
        seconds["annotate"] = time.perf_counter() - started
        progress.advance()
        _publish_stage(run_id, i, "annotate", metrics, "rewards, turning points, advantages")
        _log(
            f"iteration {i}: final reward {metrics.get('reward_final_mean', float('nan')):.4f}, "
            f"turning points {metrics.get('turning_points')} (kept {metrics.get('kept')})"
        )
        started = time.perf_counter()
        update_metrics = update_task.with_options(retries=retries).submit(ctx, i).result()
        seconds["update"] = time.perf_counter() - started
        progress.advance()
        _publish_stage(run_id, i, "update", update_metrics, "means over its optimizer steps")
        if ctx.cfg.storage.keep_latents is not None:
            drop_latents(ctx.layout, ctx.cfg.storage.keep_latents)
        _track(tracker, i)
        publish_markdown(
            summary_key(run_id, i),
            iteration_markdown(run_id, i, metrics, update_metrics, seconds, _stored_evals(ctx, i)),
            f"iteration {i} of run {run_id}",
        )
        timings.update({f"it{i}.{stage}": s for stage, s in seconds.items()})
    return {
        "run_id": ctx.layout.run_id,
        "root": ctx.layout.root,
        "run_dir": ctx.layout.run_dir,
        "iterations": iterations,
        "timings": timings,
    }


def train(
    cfg: Config,
    run_id: str | None = None,
    iterations: int | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the training flow of `cfg` under the run lock.

    Bad input (see `preflight`) fails before the lock is taken: nothing is written then.
    """
    # an empty run id is a mistake (RunLayout refuses it), never "the config's name"
    ctx = RunContext.create(cfg, cfg.name if run_id is None else run_id, root)
    n = iterations if iterations is not None else cfg.iterations
    preflight(ctx)
    with run_lock(ctx.layout.lock(), ctx.storage_options):
        flow_fn = train_flow.with_options(task_runner=task_runner_for(cfg))
        result: dict[str, Any] = flow_fn(ctx, n)
        return result


@flow(name="tpgrpo-train", flow_run_name=names.TRAIN_RUN, log_prints=True, persist_result=False)
def train_flow(ctx: RunContext, iterations: int) -> dict[str, Any]:
    """Prefect flow: TP-GRPO training iterations on one run (see `train`)."""
    return train_iterations(ctx, iterations)


TRAINED_EVENT = "tpgrpo.run.trained"
"""The Prefect event `train_deployment` emits when a run's training finished (prefect.yaml's trigger)."""


def trained_event(result: dict[str, Any]) -> dict[str, Any]:
    """The `emit_event` arguments announcing the finished training `result` of `train`: the run is
    the event's resource (`tpgrpo.run.<run id>`, named by its run id, with its runs root)."""
    return {
        "event": TRAINED_EVENT,
        "resource": {
            "prefect.resource.id": f"tpgrpo.run.{result['run_id']}",
            "prefect.resource.name": result["run_id"],
            "tpgrpo.root": result["root"],
        },
        "payload": {"iterations": result["iterations"]},
    }


@flow(
    name="tpgrpo-train-config",
    flow_run_name=names.train_deployment_run_name,
    log_prints=True,
    persist_result=False,
)
def train_deployment(
    config: str = "configs/tiny.yaml",
    run_id: str | None = None,
    iterations: int | None = None,
    overrides: list[str] | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """Deployment entrypoint (plain parameters): load the YAML config (+ overrides) and train.

    Runs the train flow as a subflow, under the run lock, exactly as `tpgrpo train` does, in the
    same runs root (`root`, else the worker's `$TPGRPO_ROOT`, else the config's `storage.root`); once
    it finished, emits `tpgrpo.run.trained` (`trained_event`), related to this flow run and deployment.
    """
    from prefect.events import emit_event

    from tpgrpo.config import load_config
    from tpgrpo.pipeline.root import resolve_root

    cfg = load_config(config, overrides or ())
    result = train(cfg, run_id=run_id, iterations=iterations, root=resolve_root(root, cfg.storage.root))
    emit_event(**trained_event(result))
    return result
