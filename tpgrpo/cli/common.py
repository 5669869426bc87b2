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


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(path: str, option: str, suffix: str) -> None:
    """A local file a command will write (e.g. `--png`): checked before any work, so a mistake never
    surfaces as an I/O failure after it.

    Raises:
        UserError: empty, not ending in `suffix`, an existing folder, its folder missing or not
            writable.
    """
    if not path.strip():
        raise UserError(f"{option} is empty; give a file path ending in {suffix}")
    if "://" in path:
        raise UserError(f"{option} {path!r} must be a local file path (ending in {suffix})")
    target = Path(path).expanduser()
    if target.suffix.lower() != suffix:
        raise UserError(f"{option} {path!r} must end in {suffix}")
    if target.is_dir():
        raise UserError(f"{option} {path!r} is a folder; give a file path ending in {suffix}")
    folder = target.parent
    if not folder.is_dir():
        raise UserError(
            f"{option} {path!r}: folder {str(folder)!r} does not exist; create it or pick another path"
        )
    if not os.access(folder, os.W_OK):
        raise UserError(f"{option} {path!r}: folder {str(folder)!r} is not writable; pick another path")


def check_output_dir(path: str, option: str) -> None:
    """A local folder a command will create or fill (e.g. `report --out`), checked before any work.

    Raises:
        UserError: empty, an S3 URI, an existing file, below a file, or not writable.
    """
    if not path.strip():
        raise UserError(f"{option} is empty; give a local folder, or leave it out")
    if "://" in path:
        raise UserError(f"{option} {path!r} must be a local folder (it is written on this machine)")
    target = Path(path).expanduser()
    existing = _first_existing(target)
    if not existing.is_dir():
        what = "is a file" if existing == target else f"lies below {str(existing)!r}, which is a file"
        raise UserError(f"{option} {path!r} {what}; give a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{option} {path!r}: {str(existing)!r} is not writable; pick another folder")


def default_config_path() -> str:
    """`configs/tiny.yaml` of the working directory, else the one next to the package (checkout)."""
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    beside = Path(__file__).resolve().parents[2] / DEFAULT_CONFIG
    return str(beside) if beside.is_file() else DEFAULT_CONFIG


def load_run(run_id: str, root: str | None) -> Any:
    """The `RunContext` of a stored run, its config read back from `run.json`.

    Raises:
        UserError: no such run (lists the runs there are); `StorageAccessError` when the root cannot
            be used (no S3 credentials, endpoint unreachable, no bucket, a file).
        DataError: its `run.json` is damaged, or holds a config this version refuses.
    """
    from tpgrpo.config import load_config_data
    from tpgrpo.errors import ConfigError, DataError
    from tpgrpo.flows.steps import RunContext
    from tpgrpo.storage import RunLayout, list_runs, read_run_record
    from tpgrpo.storage.access import check_root

    base = resolve_root(root)
    layout = RunLayout(base, run_id)
    check_root(base)
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
