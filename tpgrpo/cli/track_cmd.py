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
    from tpgrpo.tracking import tracker_for

    ctx = load_run(run, root)
    tracker = tracker_for(ctx, tensorboard=tensorboard, mlflow_uri=mlflow_uri, experiment=experiment)
    if tracker is None:
        raise UserError(
            f"nothing to track run {run!r} into: pass --tensorboard DIR and/or --mlflow-uri URI "
            "(or set tracking.tensorboard / tracking.mlflow_uri in the run's config)"
        )
    try:
        tracker.log_config()
        iterations = tracker.log_iterations()
        evals = tracker.log_evals()
    finally:
        tracker.close()
    where = " and ".join(sink.describe() for sink in tracker.sinks)
    echo(f"run {run}: sent {iterations} iteration(s) and {evals} evaluation(s) to {where}")
