"""Options and helpers every command shares: `--root`/`--run`/`--set`, output paths, the default config.

The runs root is resolved by `tpgrpo.pipeline.root.resolve_root` (re-exported here for the commands).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tpgrpo.errors import UserError
from tpgrpo.pipeline.root import resolve_root as resolve_root  # the commands import it from here

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

DEFAULT_CONFIG = "configs/tiny.yaml"
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # tpgrpo/configs: inside the wheel too

ConfigArgument = Annotated[
    str, typer.Argument(help="Experiment YAML, or the name of a shipped config (tiny, sd35m_pickscore, ...)")
]
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


def shipped_configs() -> list[str]:
    """The names of the configs shipped in the package (`tiny`, `sd35m_pickscore`, ...)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config(config: str | None) -> str:
    """A config argument as a path: a YAML file as given; the name of a shipped config (`tiny`,
    `sd35m_pickscore`, ...); None: `configs/tiny.yaml` of the working directory, else the shipped
    one (so `tpgrpo train` works from an installed wheel in any folder)."""
    if config is None:
        return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else str(SHIPPED_CONFIGS / "tiny.yaml")
    named = SHIPPED_CONFIGS / f"{config}.yaml"
    if not Path(config).exists() and "/" not in config and named.is_file():
        return str(named)
    return config


def load_run(run_id: str, root: str | None) -> RunContext:
    """`tpgrpo.pipeline.context.load_run`, imported when a command runs (`--help` stays instant)."""
    from tpgrpo.pipeline.context import load_run as load

    return load(run_id, root)


def echo(message: str) -> None:
    typer.echo(message)
