"""The runs root, resolved in one place: `--root`, else `$TPGRPO_ROOT`, else the config's
`storage.root`, else `./runs`. Import-light (the CLI's `--help` stays instant)."""

from __future__ import annotations

import os

from tpgrpo.errors import UserError


def resolve_root(root: str | None, config_root: str | None = None) -> str:
    """--root, else $TPGRPO_ROOT (when not empty), else the config's storage.root, else ./runs.

    Raises:
        UserError: `--root ""` (an empty root is a mistake, never "the default").
    """
    if root is not None and not root.strip():
        raise UserError("--root is empty; give a local path or s3://bucket/prefix, or leave it out")
    return root or os.environ.get("TPGRPO_ROOT") or config_root or "./runs"
