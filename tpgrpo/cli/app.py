"""The `tpgrpo` command: a thin Typer app; each command group lives in its own module.

Commands parse their arguments and delegate; torch, diffusers and Prefect are imported inside the
commands so `tpgrpo --help` is instant. Errors of this package become one message on stderr and a
non-zero exit: 2 for user mistakes (bad config, unknown run, bad argument), 1 for failures found in
stored data or in a reward model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from tpgrpo.cli import (
    audit_cmd,
    config_cmd,
    ops_cmd,
    pretrain_cmd,
    report_cmd,
    runs_cmd,
    serve_cmd,
    train_cmd,
)
from tpgrpo.errors import TpgrpoError, UserError

app = typer.Typer(
    name="tpgrpo",
    help="TP-GRPO fine-tuning of flow-matching text-to-image models as resumable Prefect flows over Parquet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("train")(train_cmd.train)
app.command("stage")(train_cmd.stage)
app.add_typer(config_cmd.app, name="config")
app.add_typer(pretrain_cmd.app, name="pretrain")
app.command("rescore")(ops_cmd.rescore)
app.command("annotate")(ops_cmd.annotate)
app.command("evaluate")(ops_cmd.evaluate)
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(audit_cmd.app, name="audit")
app.command("report")(report_cmd.report)
app.command("serve-reward")(serve_cmd.serve_reward)


def prefect_environment() -> None:
    """Defaults for running flows without a Prefect server (a user's own settings win)."""
    os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    """Entry point: run the app, turning package errors into one line and an exit code.

    Typer runs in standalone mode, so usage errors (missing or unknown options) print click's
    message with exit code 2 and `typer.Exit` codes pass through; this package's errors propagate
    out of the command and are reported here.
    """
    prefect_environment()
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except TpgrpoError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:  # storage or network still failing after the clients' and tasks' retries
        typer.echo(f"error: I/O failed: {err}; run the same command again to resume", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
