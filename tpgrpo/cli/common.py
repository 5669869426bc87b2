"""Options and helpers every command shares: the runs root, loading a stored run's config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tpgrpo.errors import UserError

DEFAULT_CONFIG = "configs/tiny.yaml"

RootOption = Annotated[
    str | None,
    typer.Option(
        "--root", help="Runs root: local path or s3://bucket/prefix [env TPGRPO_ROOT; default ./runs]"
    ),
]
RunOption = Annotated[str, typer.Option("--run", help="Run id (a folder under the runs root)")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set update.lr=1e-4 (repeatable)"),
]


def resolve_root(root: str | None, config_root: str | None = None) -> str:
    """--root, else $TPGRPO_ROOT (when not empty), else the config's storage.root, else ./runs.

    Raises:
        UserError: `--root ""` (an empty root is a mistake, never "the default").
    """
    if root is not None and not root.strip():
        raise UserError("--root is empty; give a local path or s3://bucket/prefix, or leave it out")
    return root or os.environ.get("TPGRPO_ROOT") or config_root or "./runs"


def default_config_path() -> str:
    """`configs/tiny.yaml` of the working directory, else the one next to the package (checkout)."""
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    beside = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
    return str(beside) if beside.is_file() else DEFAULT_CONFIG


def load_run(run_id: str, root: str | None) -> Any:
    """The `RunContext` of a stored run, its config read back from `run.json`.

    Raises:
        UserError: no such run (lists the runs there are).
        DataError: its `run.json` is damaged, or holds a config this version refuses.
    """
    from tpgrpo.config import load_config_data
    from tpgrpo.errors import ConfigError, DataError
    from tpgrpo.flows.steps import RunContext
    from tpgrpo.storage import RunLayout, list_runs, read_run_record

    base = resolve_root(root)
    layout = RunLayout(base, run_id)
    record = read_run_record(layout)
    if record is None:
        known = list_runs(base)
        hint = f"runs under {base}: {', '.join(known)}" if known else f"no runs under {base}"
        raise UserError(f"unknown run {run_id!r} ({hint}); pass --run with one of them, or --root")
    data = record["config"]
    s3 = data.get("storage", {}).get("s3", {}) if isinstance(data.get("storage"), dict) else {}
    for key, value in list(s3.items() if isinstance(s3, dict) else ()):
        if value == "<redacted>":  # credentials are never stored: the AWS environment supplies them
            s3[key] = None
    try:
        cfg = load_config_data(data)
    except ConfigError as err:
        version = record.get("code_version", "an unknown version")
        raise DataError(
            f"run {run_id!r}: {layout.run_json()} holds a config this tpgrpo refuses "
            f"({'; '.join(err.problems)}); it was written by {version}: read the run with that "
            "version, or restore run.json from a backup"
        ) from None
    return RunContext.create(cfg, run_id, base)


def echo(message: str) -> None:
    typer.echo(message)
