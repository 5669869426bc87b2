"""The update stage data-parallel under torchrun (DDP): one process per rank, one GPU each on CUDA.

```
torchrun --standalone --nproc_per_node 2 -m tpgrpo.flows.ddp_update --run-id ID --iter K [--root R]
```

Every rank loads the run's config from `run.json` (credentials from the AWS environment, as every
command on a stored run), the same checkpoint and the same data; `steps.update_step` with a
`DataParallel` splits each optimizer step's transitions over the ranks, all-reduces the gradients
and lets rank 0 decide (skip / redo) and write the `updates` dataset and the next checkpoint.
Backend: NCCL when `model.device` is `cuda` (rank `r` takes `cuda:LOCAL_RANK`), gloo on the CPU.
Without torchrun the module runs as a single process (world size 1): the plain update. (The option
is `--run-id`, not `--run`: torchrun's own parser takes `--run` for an abbreviation of `--run-path`.)

The train flow starts it itself when `update.ddp_procs > 1` (`launch`): one torchrun on the
flow's machine, `--standalone` (a free local port), waited for; its output goes to the flow's
stderr. See docs/scale-out.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from typing import TYPE_CHECKING, Annotated

import typer

from tpgrpo.errors import TpgrpoError, UserError
from tpgrpo.pipeline.context import Log, quiet

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.storage.blobs import BlobManifest

_TAIL_LINES = 40


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value is not None else default


def run_rank(run: str, iteration: int, root: str | None = None, force: bool = False) -> BlobManifest:
    """This process's rank of the data-parallel update of `iteration` (torchrun's env: RANK, …).

    Returns:
        the manifest of checkpoint `iteration + 1` (on every rank).

    Raises:
        UserError: an unknown run or iteration, or a CUDA device other than plain `cuda`.
    """
    import torch

    from tpgrpo.pipeline.context import load_run
    from tpgrpo.pipeline.steps import update_step
    from tpgrpo.stages.update import DataParallel

    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if rank > 0:
        os.environ["TPGRPO_PROGRESS"] = "0"  # one progress bar, rank 0's
    ctx = load_run(run, root)
    if iteration >= ctx.cfg.iterations:
        raise UserError(
            f"iteration {iteration} is outside run {run!r} (iterations 0 … {ctx.cfg.iterations - 1})"
        )
    device = ctx.cfg.model.device
    backend = "gloo"
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(
                f"model.device is {device!r}: under torchrun use 'cuda' (each rank takes cuda:LOCAL_RANK)"
            )
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): "
                "use at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)  # "cuda" is this rank's GPU from here on
        backend = "nccl"
    if world > 1:
        torch.distributed.init_process_group(backend=backend)
    try:
        log: Log = typer.echo if rank == 0 else quiet
        if rank == 0 and world > 1:
            log(f"update it{iteration}: data-parallel over {world} processes ({backend})")
        done = update_step(ctx, iteration, force=force, log=log, dp=DataParallel(rank, world))
        if world > 1:
            # no rank tears its connections down while a peer may still read from them: gloo
            # aborts the process ("terminate called without an active exception") if one does
            torch.distributed.barrier()
        return done
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def ddp_update(
    run: Annotated[str, typer.Option("--run-id", help="Run id (a folder under the runs root)")],
    iteration: Annotated[int, typer.Option("--iter", min=0, help="Iteration to train on")],
    root: Annotated[
        str | None,
        typer.Option("--root", help="Runs root: local path or s3://bucket/prefix [env TPGRPO_ROOT]"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a finished update")] = False,
) -> None:
    """The update stage of one iteration, data-parallel over torchrun's processes."""
    run_rank(run, iteration, root, force)


def main() -> None:
    """Entry point under torchrun: package errors become one line and an exit code (2 / 1)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(ddp_update)
    try:
        app()  # standalone: a bad option prints click's usage message and exits 2 by itself
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except TpgrpoError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)


# --- the train flow's launcher ----------------------------------------------------------------------


def torchrun_command(run: str, iteration: int, root: str, procs: int) -> list[str]:
    """The command line that runs the update of `iteration` on `procs` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(procs),
        "-m",
        "tpgrpo.flows.ddp_update",
        "--run-id",
        run,
        "--iter",
        str(iteration),
        "--root",
        root,
    ]


def _child_env(ctx: RunContext) -> dict[str, str]:
    """The flow's environment plus the config's S3 settings (run.json holds no credentials)."""
    env = dict(os.environ)
    s3 = ctx.cfg.storage.s3
    for name, value in (
        ("AWS_ENDPOINT_URL", s3.endpoint_url),
        ("AWS_ACCESS_KEY_ID", s3.key),
        ("AWS_SECRET_ACCESS_KEY", s3.secret),
        ("AWS_DEFAULT_REGION", s3.region),
    ):
        if value:
            env[name] = value
    return env


def launch(ctx: RunContext, iteration: int, log: Log = quiet) -> BlobManifest:
    """Run the update of `iteration` under torchrun with `update.ddp_procs` processes and wait.

    A finished update is skipped without starting any process.

    Returns:
        the manifest of checkpoint `iteration + 1`.

    Raises:
        TpgrpoError: torchrun exited non-zero (the message holds the end of its output).
    """
    from tpgrpo.pipeline.steps import prepare_update
    from tpgrpo.storage.blobs import read_blob_manifest

    plan = prepare_update(ctx, iteration)
    if plan.done is not None:
        log(f"update it{iteration}: done, skipped")
        return plan.done
    procs = ctx.cfg.update.ddp_procs
    cmd = torchrun_command(ctx.layout.run_id, iteration, ctx.layout.root, procs)
    log(f"update it{iteration}: torchrun with {procs} processes")
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        cmd, env=_child_env(ctx), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    if code != 0:
        raise TpgrpoError(
            f"the data-parallel update of iteration {iteration} ({procs} torchrun processes) failed "
            f"with exit code {code}; its output ended with:\n{''.join(tail)}"
        )
    manifest = read_blob_manifest(ctx.layout.checkpoint(iteration + 1), ctx.storage_options)
    log(f"update it{iteration}: {manifest.meta.get('optimizer_step')} optimizer steps so far")
    return manifest


if __name__ == "__main__":
    main()
