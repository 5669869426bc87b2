"""`tpgrpo report`: PNG plots and one self-contained HTML page of a stored run."""

from __future__ import annotations

from typing import Annotated

import typer

from tpgrpo.cli.common import RootOption, RunOption, echo, load_run


def report(
    run: RunOption,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", help="Output folder [default: <run>/report for local runs, ./<run>-report for S3]"
        ),
    ] = None,
    reward: Annotated[
        str | None, typer.Option("--reward", help="Stored reward key to report [default: the run's]")
    ] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="Reward mode to report [default: the run's]")
    ] = None,
    root: RootOption = None,
) -> None:
    """Reward curves (iteration, model evaluations, wall-clock), turning-point statistics, image strips."""
    from tpgrpo.cli.audit_cmd import fail_on_left_out, key_and_mode
    from tpgrpo.cli.common import check_output_dir
    from tpgrpo.report.build import build_report
    from tpgrpo.storage.uri import is_s3

    if out is not None:
        check_output_dir(out, "--out")
    ctx = load_run(run, root)
    key, m = key_and_mode(ctx, reward, mode)
    target = out or (f"./{run}-report" if is_s3(ctx.layout.run_dir) else f"{ctx.layout.run_dir}/report")
    check_output_dir(target, "--out")
    files = build_report(ctx, target, reward_key=key, mode=m, log=echo)
    for image in files.images:
        echo(f"png:  {image}")
    echo(f"html: {files.html}")
    for sentence in files.learned:
        echo(f"learned: {sentence}")
    fail_on_left_out(ctx, key, m)
