"""The `evaluate` flow: pure-ODE samples of held-out prompts with a checkpoint's EMA weights, scored.

Per checkpoint `K` (0 is the base model: its adapter is the identity), the policy loads the EMA
LoRA weights of `checkpoints/iter=K`, samples every evaluation prompt (× replicates) with the ODE
sampler and scores the images; the rows go to `eval/iter=K/<reward_key>` (`eval/iter=K.steps=S/…`
when the step count is not the config's `sampling.eval_steps`). The noise of each sample depends
on the run seed, the prompt row and the replicate only, so checkpoints are compared on paired samples.

Idempotent like the stages: the manifest records the checkpoint's hash as input and a hash of the
reward, steps, prompts and sampling settings; an identical rerun returns at once, other settings
over a finished output are refused unless `force`. Evaluation does not take the run lock, so it
can score finished checkpoints while training goes on.

Like training, the policy and the reward model are loaded only by tasks on the run's task runner
(`flow.task_runner`: the GPU workers of a Dask cluster), one checkpoint after another; the flow's
process checks names and parameters, never loads a model.

In the Prefect UI: the flow run `evaluate-<run id>`, task runs `evaluate-checkpoint<K>`, a progress
bar over the checkpoints (`<run>-evaluate-progress`), a table with one row per checkpoint
(`<run>-evaluate`) and the link to the run's report (`<run>-report`).
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, task
from prefect.logging import get_run_logger

from tpgrpo.config import SpecData
from tpgrpo.errors import ConfigError, UserError
from tpgrpo.flows import names
from tpgrpo.flows.artifacts import Progress, artifact_key, eval_row, publish_link, publish_table, report_link
from tpgrpo.flows.rescore import TASK_OPTIONS
from tpgrpo.flows.runner import task_runner_for
from tpgrpo.flows.train import check_task
from tpgrpo.pipeline.context import RunContext
from tpgrpo.pipeline.evaluate import eval_prompts, evaluate_checkpoint, flat_metrics
from tpgrpo.tracking import run_tracker


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="evaluate-checkpoint", task_run_name=names.EVALUATE, **TASK_OPTIONS)
def evaluate_task(
    ctx: RunContext,
    checkpoint: int,
    spec: SpecData,
    steps: int,
    prompt_source: str | None,
    per_task: int | None,
    replicates: int,
    force: bool,
) -> dict[str, Any]:
    return evaluate_checkpoint(
        ctx,
        checkpoint,
        spec,
        steps=steps,
        prompt_source=prompt_source,
        per_task=per_task,
        replicates=replicates,
        force=force,
        log=_log,
    )


@flow(name="tpgrpo-evaluate", flow_run_name=names.EVALUATE_RUN, log_prints=True, persist_result=False)
def evaluate_flow(
    ctx: RunContext,
    checkpoints: list[int],
    spec: SpecData,
    steps: int,
    prompt_source: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Prefect flow: evaluate each checkpoint in turn (see `evaluate_checkpoint`), every task on the
    task runner, the device and the reward checked first by `check-worker`."""
    retries = ctx.cfg.flow.io_retries
    check_task.with_options(retries=retries).submit(ctx, spec).result()
    run_task = evaluate_task.with_options(retries=retries)
    layout = ctx.layout
    progress = Progress.start(
        artifact_key(layout.run_id, "evaluate", "progress"),
        len(checkpoints),
        f"run {layout.run_id}: checkpoints evaluated of {checkpoints}",
    )
    results = []
    for k in checkpoints:  # one at a time: the checkpoints share the worker's cached policy
        results.append(
            run_task.submit(ctx, k, spec, steps, prompt_source, per_task, replicates, force).result()
        )
        progress.advance()
    source = prompt_source or "default"
    rows = [
        eval_row(
            r["checkpoint"],
            r["name"],
            r["reward_key"],
            r["rows"],
            flat_metrics(r["summary"], steps, replicates, source),
        )
        for r in results
    ]
    publish_table(
        artifact_key(layout.run_id, "evaluate"),
        rows,
        f"run {layout.run_id}: evaluation of each checkpoint ({steps} ODE steps, {replicates} replicate(s))",
    )
    uri, description = report_link(layout.run_dir, layout.run_id, layout.root)
    publish_link(artifact_key(layout.run_id, "report"), uri, f"report of run {layout.run_id}", description)
    return results


def run_evaluation(
    ctx: RunContext,
    *,
    checkpoint: str | None = None,
    reward: str | dict[str, Any] | None = None,
    steps: int | None = None,
    prompts: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
    baseline: int | None = None,
) -> list[dict[str, Any]]:
    """Validate every argument, then run the evaluate flow.

    `baseline`: a checkpoint evaluated too (first), for paired gains over it (`report.paired`).

    Raises:
        UserError: a device this machine lacks (when the tasks run here: `flow.tasks_run_here`),
            an unknown checkpoint, reward, step count or prompt set.
    """
    from tpgrpo.models.devices import check_model_device
    from tpgrpo.pipeline.select import parse_reward_spec, select_checkpoints
    from tpgrpo.stages.prompts import check_prompts_for_reward
    from tpgrpo.storage import validate_key

    if ctx.cfg.flow.tasks_run_here:  # e.g. a GPU run evaluated on a machine without one
        check_model_device(ctx.cfg)
    spec = parse_reward_spec(reward) if reward is not None else ctx.cfg.reward.spec
    # unknown names, bad parameters and a key that cannot be a folder name fail here, before sampling
    validate_key(ctx.reward_key(spec))
    checkpoints = select_checkpoints(ctx, checkpoint)
    if baseline is not None:
        checkpoints = sorted({*select_checkpoints(ctx, str(baseline)), *checkpoints})
    n_steps = steps if steps is not None else ctx.cfg.sampling.eval_steps
    if not 1 <= n_steps <= 1000:
        raise UserError(f"--steps must be in 1 … 1000, got {n_steps}")
    if replicates < 1:
        raise UserError(f"--replicates must be at least 1, got {replicates}")
    _, rows = eval_prompts(ctx, prompts, per_task)
    problems = check_prompts_for_reward(rows, spec)
    if problems:
        raise ConfigError(problems)
    tracker = run_tracker(ctx)  # before sampling: a missing tracking package is a config error
    flow_fn = evaluate_flow.with_options(task_runner=task_runner_for(ctx.cfg))
    result: list[dict[str, Any]] = flow_fn(
        ctx, checkpoints, spec, n_steps, prompts, per_task, replicates, force
    )
    if tracker is not None:
        try:
            tracker.log_evals()
        except Exception as err:  # the evaluation is stored; tracking can catch up later
            print(f"tracking the evaluation failed ({err}); send it later with tpgrpo track", file=sys.stderr)
        finally:
            tracker.close()
    return result


@flow(
    name="tpgrpo-evaluate-run",
    flow_run_name=names.EVALUATE_DEPLOYMENT_RUN,
    log_prints=True,
    persist_result=False,
)
def evaluate_deployment(
    run: str,
    checkpoint: str | int = "latest",
    reward: str | dict[str, Any] | None = None,
    steps: int | None = None,
    prompts: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    root: str | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Deployment entrypoint (plain parameters): evaluate checkpoints of stored run `run`.

    `checkpoint`: K, `latest` or `all`; `reward`: None (the run's), a name, JSON text or a mapping.
    """
    from tpgrpo.pipeline.context import load_run

    return run_evaluation(
        load_run(run, root),
        checkpoint=str(checkpoint),
        reward=reward,
        steps=steps,
        prompts=prompts,
        per_task=per_task,
        replicates=replicates,
        force=force,
    )
