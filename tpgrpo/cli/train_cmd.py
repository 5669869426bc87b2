"""`tpgrpo train` and `tpgrpo stage`: run or resume training, or one stage of one iteration."""

from __future__ import annotations

from typing import Annotated

import typer

from tpgrpo.cli.common import (
    RootOption,
    RunOption,
    SetOption,
    echo,
    load_run,
    resolve_config,
    resolve_root,
)


def train(
    config: Annotated[
        str | None,
        typer.Argument(
            help="Experiment YAML, or a shipped config's name (tiny, sd35m_pickscore, ...) [default: tiny]"
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run id [default: the config's name]; same id resumes")
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations", min=1, max=1_000_000, help="Iterations to reach [default: the config's]"
        ),
    ] = None,
    overrides: SetOption = None,
    root: RootOption = None,
) -> None:
    """Train (or resume) a TP-GRPO run: rollout → branch → score → annotate → update per iteration.

    Running the same command again resumes: finished stages are skipped, crash debris is redone.
    """
    from tpgrpo.cli.console import quiet_expected_failures
    from tpgrpo.config import load_config
    from tpgrpo.flows.server import temporary_server
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.pipeline.start import preflight

    cfg = load_config(resolve_config(config), overrides or [])
    base = resolve_root(root, cfg.storage.root)
    # bad input fails here with one message, before anything is written: not even the temporary
    # Prefect server's home (`train` checks again under the run lock, from its own callers too)
    # an empty --run-id is refused here (RunLayout), never replaced by the config's name
    preflight(RunContext.create(cfg, cfg.name if run_id is None else run_id, base))
    from tpgrpo.flows.train import train as run_train  # imports Prefect, which creates its home

    quiet_expected_failures()
    with temporary_server():  # dies with this process, even under kill -9
        result = run_train(cfg, run_id=run_id, iterations=iterations, root=base)
    run_dir = result["run_dir"]
    echo(f"run finished: {result['iterations']} iteration(s) in {run_dir}")
    echo(f"  datasets:  {run_dir}/iter=NNNN/{{rollouts,branches,rewards,annotations,updates}}")
    echo(f"  adapters:  {run_dir}/checkpoints/")
    echo(f"  inspect:   tpgrpo runs show {cfg.name if run_id is None else run_id} --root {base}")


def stage(
    name: Annotated[str, typer.Argument(help="rollout | branch | score | annotate | update")],
    run: RunOption,
    iteration: Annotated[int, typer.Option("--iter", min=0, help="Iteration index")],
    force: Annotated[bool, typer.Option("--force", help="Replace a finished output")] = False,
    root: RootOption = None,
) -> None:
    """Run one stage of one iteration of a stored run (skipped when already finished)."""
    from tpgrpo.errors import UserError
    from tpgrpo.pipeline.steps import STAGES, run_stage

    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    ctx = load_run(run, root)
    if iteration >= ctx.cfg.iterations:
        raise UserError(
            f"iteration {iteration} is outside run {run!r} (iterations 0 … {ctx.cfg.iterations - 1})"
        )
    from tpgrpo.storage.lock import run_lock

    with run_lock(ctx.layout.lock(), ctx.storage_options):  # never beside a train of the same run
        manifest = run_stage(ctx, name, iteration, force=force, log=echo)
    rows = getattr(manifest, "rows", None)
    echo(f"{name} it{iteration}: finished" + (f" ({rows} rows)" if rows is not None else ""))
