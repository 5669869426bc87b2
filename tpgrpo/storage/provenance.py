"""Provenance stamped into manifests: the code version and hashes of configs and JSON content."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

import tpgrpo


def canonical_json(value: Any) -> str:
    """Serialises JSON-able data canonically: sorted keys, no whitespace, UTF-8, finite floats only.

    Raises:
        `ValueError`: NaN or infinite floats. `TypeError`: values JSON cannot represent.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes | str) -> str:
    """The hex SHA-256 of bytes (strings are UTF-8 encoded)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """The SHA-256 of a resolved config's canonical JSON; equal configs hash equally.

    Args:
        config (`Mapping[str, Any]`): JSON-able config (dump pydantic models first).

    Returns:
        `str`: 64 hex digits.
    """
    return sha256_hex(canonical_json(config))


def _git(*args: str) -> str | None:
    package_dir = os.path.dirname(os.path.abspath(tpgrpo.__file__))
    try:
        result = subprocess.run(
            ["git", "-C", package_dir, *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


BUILD_COMMIT = "BUILD_COMMIT"
"""A file in the installed package naming the commit it was built from (the Dockerfile writes it)."""


def _build_commit() -> str | None:
    path = os.path.join(os.path.dirname(os.path.abspath(tpgrpo.__file__)), BUILD_COMMIT)
    try:
        with open(path) as f:
            commit = f.read().strip()
    except OSError:
        return None
    return commit if re.fullmatch(r"[0-9a-f]{7,40}", commit) else None


@functools.cache
def code_version() -> str:
    """The package version plus the git commit: from the checkout when running from one, else from
    the `BUILD_COMMIT` file an image build wrote into the package.

    Returns:
        `str`: e.g. `"0.1.0+g1a2b3c4d5e6f"`, with `".dirty"` when tracked files of the checkout are
        modified, or just `"0.1.0"` outside a checkout with no build commit.
    """
    commit = _git("rev-parse", "--short=12", "HEAD")
    if not commit:
        built = _build_commit()
        return f"{tpgrpo.__version__}+g{built}" if built else tpgrpo.__version__
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{tpgrpo.__version__}+g{commit}{'.dirty' if dirty else ''}"
