"""`tpgrpo audit trajectory|turning-points|verify|health`: inspect and check what a run stored."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tpgrpo.cli.common import RootOption, RunOption, echo, load_run
from tpgrpo.cli.jsonout import JsonOption, emit, note, plain

app = typer.Typer(
    help="Audit stored trajectories, turning points, the integrity of a run and its learning health.",
    no_args_is_help=True,
)

RewardKeyOption = Annotated[
    str | None, typer.Option("--reward", help="Stored reward key [default: the run's reward]")
]
ModeOption = Annotated[str | None, typer.Option("--mode", help="Reward mode [default: the run's]")]


def key_and_mode(ctx: Any, reward: str | None, mode: str | None) -> tuple[str, str]:
    """The reward key and mode to read (validated: stored key, known mode)."""
    from tpgrpo.report.runs import config_reward_key
    from tpgrpo.report.select import check_modes, check_reward_key

    m = check_modes([mode])[0] if mode is not None else ctx.cfg.reward.mode
    if reward is None:
        return config_reward_key(ctx), m
    stored = sorted({k for i in ctx.layout.list_iterations() for k in ctx.layout.list_rewards(i)})
    return check_reward_key(reward, stored, run_id=ctx.layout.run_id), m


def annotated_iterations(ctx: Any, key: str, mode: str) -> list[int]:
    """The iterations with finished annotations of `key`/`mode`."""
    from tpgrpo.report.runs import annotation_iterations

    return annotation_iterations(ctx, key, mode)[0]


def fail_on_left_out(ctx: Any, key: str, mode: str) -> None:
    """Names every iteration whose `key`/`mode` annotations are damaged (one line each, stderr) and
    fails: a report or statistics without them must not pass for complete."""
    from tpgrpo.report.runs import annotation_iterations, left_out_error

    damaged = annotation_iterations(ctx, key, mode)[1]
    for i, reason in sorted(damaged.items()):
        typer.echo(f"left out iteration {i}: {reason}", err=True)
    if damaged:
        raise left_out_error(ctx.layout.run_id, key, mode, damaged)


@app.command("trajectory")
def trajectory(
    run: RunOption,
    iteration: Annotated[int, typer.Option("--iter", help="Iteration index")],
    traj: Annotated[int, typer.Option("--traj", help="Trajectory id within the iteration")],
    png: Annotated[
        str | None, typer.Option("--png", help="Also write a PNG strip of its branch images here")
    ] = None,
    reward: RewardKeyOption = None,
    mode: ModeOption = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """One trajectory: boundary rewards, increments, turning points, step rewards and advantages."""
    from tpgrpo.cli.common import check_output_file
    from tpgrpo.report.select import check_iteration
    from tpgrpo.report.trajectory import format_trajectory, load_trajectory, trajectory_strip

    if png is not None:
        check_output_file(png, "--png", ".png")
    ctx = load_run(run, root)
    key, m = key_and_mode(ctx, reward, mode)
    check_iteration(iteration, annotated_iterations(ctx, key, m), run_id=run, what=f"{key}/{m} annotations")
    audit = load_trajectory(ctx, iteration, traj, key, m)
    if as_json:
        emit(audit)
    else:
        echo(format_trajectory(audit))
    if png is not None:
        trajectory_strip(ctx, audit).save(png)
        note(f"png: {png}", as_json)


@app.command("turning-points")
def turning_points(
    run: RunOption,
    reward: RewardKeyOption = None,
    mode: ModeOption = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per iteration: turning-point rate by step, sign balance before/after balancing, magnitudes."""
    from tpgrpo.errors import UserError
    from tpgrpo.report.stats import format_turning_points, read_turning_point_stats

    ctx = load_run(run, root)
    key, m = key_and_mode(ctx, reward, mode)
    iterations = annotated_iterations(ctx, key, m)
    if not iterations:
        raise UserError(
            f"run {run!r} has no finished {key}/{m} annotations; make them with "
            f"tpgrpo annotate --run {run} --reward {key} --mode {m}"
        )
    stats = [
        read_turning_point_stats(ctx.layout.annotations(i, key, m), i, ctx.storage_options)
        for i in iterations
    ]
    if as_json:
        emit({"run_id": run, "reward_key": key, "mode": m, "iterations": stats})
    else:
        echo(format_turning_points(stats, f"run {run}: turning points of reward {key}, mode {m}"))
    fail_on_left_out(ctx, key, m)


@app.command("verify")
def verify(
    run: RunOption,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list everything that passed")
    ] = False,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check schemas, manifests, checksums, row counts and lineage; exit 1 listing every fault.

    On a run being trained (a live lock) only what is finished is checked; the unfinished outputs
    are work in progress, not faults (exit 0 when everything finished is sound)."""
    from tpgrpo.report.verify import verify_run

    ctx = load_run(run, root)
    report = verify_run(ctx)
    if as_json:  # everything: checked, in progress, faults, the live lock's holder
        emit({"run_id": run, "ok": not report.faults, **plain(report)})
    elif verbose:
        for item in report.checked:
            echo(f"ok     {item}")
        for item in report.in_progress:
            echo(f"busy   {item} (being written)")
    for fault in [] if as_json else report.faults:
        echo(f"FAULT  {fault}")
    if report.holder is not None and not as_json:
        import time

        holder = report.holder
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
        echo(
            f"run {run} is in progress (locked by pid {holder.get('pid')} on {holder.get('host')} since "
            f"{since}): verified what is finished; {len(report.in_progress)} unfinished output(s) not checked"
        )
    if report.faults:
        from tpgrpo.errors import DataError

        raise DataError(
            f"run {run}: {len(report.faults)} fault(s), listed {'in the document' if as_json else 'above'} "
            f"({len(report.checked)} item(s) passed); "
            "rerun the named stages (with --force where a dataset is stale) to repair"
        )
    so_far = " so far" if report.holder is not None else ""
    note(f"run {run}: OK{so_far} ({len(report.checked)} datasets and checkpoints verified)", as_json)


@app.command("health")
def health(
    run: RunOption,
    reward: RewardKeyOption = None,
    mode: ModeOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when there is any warning (for schedules and CI)")
    ] = False,
    root: RootOption = None,
) -> None:
    """Is the run learning? Per iteration: share of prompt groups with zero reward std, and each trained
    step's share of the squared gradient (from the per-step gradient norms of `updates`). Warns when
    one step holds more than half of the squared gradient, or more than half of the groups have
    zero std (no signal); each warning says what to change."""
    from tpgrpo.report.health import format_health, read_health

    ctx = load_run(run, root)
    key, m = key_and_mode(ctx, reward, mode)
    report = read_health(ctx, key, m)
    echo(format_health(report, f"run {run}: learning health (zero-std groups of {key}/{m})"))
    for warning in report.warnings:
        echo(f"WARN   {warning}")
    if not report.warnings:
        echo(f"run {run}: no warnings ({len(report.iterations)} iteration(s) checked)")
    elif strict:
        raise typer.Exit(1)
