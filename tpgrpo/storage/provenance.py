"""Provenance stamped into manifests: the code version and hashes of configs and JSON content."""

from __future__ import annotations

import functools
import hashlib
import json
import os
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


@functools.cache
def code_version() -> str:
    """The package version plus the git commit when running from a checkout.

    Returns:
        `str`: e.g. `"0.1.0+g1a2b3c4d5e6f"`, with `".dirty"` when tracked files are modified, or just
        `"0.1.0"` outside a git checkout.
    """
    commit = _git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return tpgrpo.__version__
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{tpgrpo.__version__}+g{commit}{'.dirty' if dirty else ''}"
