"""The `tpgrpo` command: a thin Typer app; each command group lives in its own module.

Commands parse their arguments and delegate; torch, diffusers and Prefect are imported inside the
commands so `tpgrpo --help` is instant. Errors of this package become one message on stderr and a
non-zero exit: 2 for user mistakes (bad config, unknown run, bad argument), 1 for failures found in
stored data or in a reward model.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tpgrpo.cli import (
    audit_cmd,
    config_cmd,
    export_cmd,
    ops_cmd,
    pretrain_cmd,
    report_cmd,
    runs_cmd,
    serve_cmd,
    track_cmd,
    train_cmd,
)
from tpgrpo.cli.console import VERBOSE_ENV, verbose
from tpgrpo.errors import TpgrpoError, UserError

app = typer.Typer(
    name="tpgrpo",
    help="TP-GRPO fine-tuning of flow-matching text-to-image models as resumable Prefect flows over Parquet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
app.command("train")(train_cmd.train)
app.command("stage")(train_cmd.stage)
app.add_typer(config_cmd.app, name="config")
app.add_typer(pretrain_cmd.app, name="pretrain")
app.command("rescore")(ops_cmd.rescore)
app.command("annotate")(ops_cmd.annotate)
app.command("evaluate")(ops_cmd.evaluate)
app.add_typer(export_cmd.app, name="export")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(audit_cmd.app, name="audit")
app.command("report")(report_cmd.report)
app.command("track")(track_cmd.track)
app.command("serve-reward")(serve_cmd.serve_reward)


def prefect_environment() -> None:
    """Defaults for running flows without a Prefect server (a user's own settings win)."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    try:  # Prefect makes only the last level (when it runs); a missing parent cost a 2-minute timeout
        home.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        message = f"cannot create PREFECT_HOME {str(home)!r} ({err.strerror})"
        _fail(f"{message}; point PREFECT_HOME at a writable folder", 2)


def _version(value: bool) -> None:
    if value:
        from tpgrpo.storage.provenance import code_version

        typer.echo(f"tpgrpo {code_version()}")  # the code version every manifest records
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the code version (package version, plus the git commit in a checkout) and exit",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            help="On failure, also print the traceback (Prefect's included); also TPGRPO_VERBOSE=1",
        ),
    ] = False,
) -> None:
    """TP-GRPO fine-tuning of flow-matching text-to-image models as resumable Prefect flows over Parquet."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read in this process and inherited by flow subprocesses


def _fail(message: str, code: int) -> NoReturn:
    if verbose():
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


def describe_os_error(err: OSError) -> tuple[str, int]:
    """The message and exit code of an I/O failure that reached the entry point.

    Only failures a rerun can get past advise running the command again: storage or network I/O
    that still failed after the clients' and tasks' retries (`StorageIOError`), and a full disk
    (once space is freed). A path that does not exist, is a file where a folder belongs (or the
    reverse), or may not be written is a mistake a rerun repeats: exit code 2 and no resume advice.
    """
    from tpgrpo.storage.files import StorageIOError

    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{err}; free some space (or raise the quota), then run the same command again to resume", 1
    if isinstance(err, StorageIOError):
        return f"{err}; once the storage answers again, run the same command again to resume", 1
    if isinstance(err, FileNotFoundError | NotADirectoryError | IsADirectoryError | FileExistsError):
        return f"{err}; check the path (running the command again will fail the same way)", 2
    if isinstance(err, PermissionError):
        return f"{err}; check the permissions of that path, or pick another one", 2
    return (
        f"I/O failed: {err}; if the cause was passing (a disk or network fault), run the same command again",
        1,
    )


def main() -> None:
    """Entry point: run the app, turning package errors into one line and an exit code.

    Typer runs in standalone mode, so usage errors (missing or unknown options) print click's
    message with exit code 2 and `typer.Exit` codes pass through; this package's errors propagate
    out of the command and are reported here (with the traceback only under `--verbose`).
    """
    prefect_environment()
    try:
        app()
    except UserError as err:
        _fail(str(err), 2)
    except TpgrpoError as err:
        _fail(str(err), 1)
    except OSError as err:
        message, code = describe_os_error(err)
        _fail(message, code)
    except Exception as err:  # S3 access failing mid-command: botocore's errors are no OSError
        from tpgrpo.storage.access import describe_storage_failure

        described = describe_storage_failure(err, os.environ.get("TPGRPO_ROOT") or "the runs root")
        if described is None:
            raise
        _fail(str(described), 2)


if __name__ == "__main__":
    main()
