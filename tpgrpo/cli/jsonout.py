"""`--json`: one JSON document on stdout for scripts; messages, progress and errors stay on stderr.

A command given `--json` builds its result as plain data (dataclasses, pydantic models, datetimes,
numpy scalars and paths are converted here) and prints it with `emit`. Its exit code is the same as
without `--json`: a command that fails after its document is complete (faults found, a damaged run
listed) prints the document first, then the one-line error on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from pathlib import PurePath
from typing import Annotated, Any

import typer

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout (messages go to stderr)")
]


def plain(value: Any) -> Any:
    """`value` as JSON-ready data: dicts, lists, str, int, float (NaN and ±inf become null), bool, None."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):  # pydantic models (the config)
        return plain(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays, torch tensors
        return plain(value.tolist())
    raise TypeError(f"no JSON form for {type(value).__name__}")


def emit(document: Any) -> None:
    """Print `document` as one JSON document on stdout."""
    typer.echo(json.dumps(plain(document), indent=1, allow_nan=False))


def note(message: str, as_json: bool) -> None:
    """A human-readable line: stdout normally, stderr under `--json` (stdout holds only the document)."""
    typer.echo(message, err=as_json)
