"""`tpgrpo track`: send a stored run's metrics to TensorBoard and/or MLflow (runs made without tracking)."""

from __future__ import annotations

from typing import Annotated

import typer

from tpgrpo.cli.common import RootOption, RunOption, echo, load_run


def track(
    run: RunOption,
    tensorboard: Annotated[
        str | None,
        typer.Option("--tensorboard", help="Write TensorBoard event files into this folder"),
    ] = None,
    mlflow_uri: Annotated[
        str | None, typer.Option("--mlflow-uri", help="MLflow tracking URI (http://host:5000, file:…)")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment [default: the run's config name]")
    ] = None,
    root: RootOption = None,
) -> None:
    """Replay a stored run into experiment trackers: per iteration its stage metrics and per-step
    diagnostics, its evaluations, and its config as params. Without options, the run's own
    `tracking.*` settings. What a sink already holds is skipped, so running it again is harmless."""
    from tpgrpo.errors import UserError
    from tpgrpo.tracking import Tracker, default_tensorboard_dir, open_sinks

    ctx = load_run(run, root)
    t = ctx.cfg.tracking
    if tensorboard is None and mlflow_uri is None:
        tensorboard = (t.tensorboard_dir or default_tensorboard_dir(ctx.layout)) if t.tensorboard else None
        mlflow_uri = t.mlflow_uri
    if tensorboard is None and mlflow_uri is None:
        raise UserError(
            f"nothing to track run {run!r} into: pass --tensorboard DIR and/or --mlflow-uri URI "
            "(or set tracking.tensorboard / tracking.mlflow_uri in the run's config)"
        )
    sinks = open_sinks(
        ctx.layout,
        experiment or t.mlflow_experiment or ctx.cfg.name,
        tensorboard_dir=tensorboard,
        mlflow_uri=mlflow_uri,
    )
    cfg = ctx.cfg
    tracker = Tracker(
        ctx.layout, ctx.reward_key(), cfg.reward.mode, cfg.sampling.eval_steps, sinks, ctx.storage_options
    )
    try:
        tracker.log_config(cfg.public_dict())
        iterations = tracker.log_iterations()
        evals = tracker.log_evals()
    finally:
        tracker.close()
    where = [f"TensorBoard {tensorboard}"] * (tensorboard is not None) + [f"MLflow {mlflow_uri}"] * (
        mlflow_uri is not None
    )
    echo(f"run {run}: sent {iterations} iteration(s) and {evals} evaluation(s) to {' and '.join(where)}")
