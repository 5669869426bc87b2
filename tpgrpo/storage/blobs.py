"""File sets with a manifest: checkpoints (adapter, optimizer, EMA, RNG and step state).

A checkpoint is a directory of named binary files plus `_CHECKPOINT.json`, written last, listing
every file's size and SHA-256, the inputs' hashes, the config hash and free-form metadata. As
with datasets, a directory without its manifest is debris of a crash, and a reader verifies every
checksum before trusting a byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tpgrpo.errors import DataError
from tpgrpo.storage.files import (
    exists,
    list_files,
    names_io_failures,
    read_bytes,
    remove_file,
    remove_tree,
    write_atomic,
)
from tpgrpo.storage.provenance import canonical_json, code_version, sha256_hex
from tpgrpo.storage.uri import filesystem_for

BLOB_MANIFEST = "_CHECKPOINT.json"
FORMAT = "tpgrpo.checkpoint/1"


@dataclass(frozen=True)
class BlobManifest:
    """The parsed `_CHECKPOINT.json`."""

    files: dict[str, dict[str, Any]]  # name -> {"bytes": int, "sha256": str}
    inputs: dict[str, str]
    config_hash: str
    code_version: str
    created: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """Content hash (files' checksums + lineage), what downstream manifests record as input."""
        lineage = {"files": self.files, "inputs": self.inputs, "config": self.config_hash}
        return sha256_hex(canonical_json(lineage))

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT,
            "files": self.files,
            "inputs": self.inputs,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "created": self.created,
            "meta": self.meta,
            "hash": self.hash,
        }
        return json.dumps(data, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> BlobManifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                found = raw.get("format")
                raise DataError(f"{where}: unknown checkpoint format {found!r}, expected {FORMAT!r}")
            return cls(
                files={str(k): dict(v) for k, v in raw["files"].items()},
                inputs={str(k): str(v) for k, v in raw["inputs"].items()},
                config_hash=str(raw["config_hash"]),
                code_version=str(raw["code_version"]),
                created=str(raw["created"]),
                meta=dict(raw["meta"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            problem = f"{type(error).__name__}: {error}"
            raise DataError(f"{where}: malformed checkpoint manifest ({problem})") from error


def blob_state(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """`"done"` (manifest present), `"debris"` (files without manifest) or `"missing"`."""
    fs, path = filesystem_for(uri, storage_options)
    listing = list_files(fs, path)
    if not listing:
        return "missing"
    return "done" if BLOB_MANIFEST in listing else "debris"


def clear_blobs(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a file set, manifest first (a crash half-way leaves debris, never a false 'done')."""
    fs, path = filesystem_for(uri, storage_options)
    remove_file(fs, f"{path}/{BLOB_MANIFEST}")
    remove_tree(fs, path)


@names_io_failures("writing checkpoint")
def write_blobs(
    uri: str,
    files: Mapping[str, bytes],
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    meta: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> BlobManifest:
    """Write `files` into the directory `uri`, then the manifest, last and atomically.

    Raises:
        DataError: the directory already holds a finished file set (clear it first).
    """
    fs, path = filesystem_for(uri, storage_options)
    if exists(fs, f"{path}/{BLOB_MANIFEST}"):
        raise DataError(f"{uri} is a finished checkpoint; clear it before writing a new one")
    entries: dict[str, dict[str, Any]] = {}
    for name, data in sorted(files.items()):
        if "/" in name or name.startswith(("_", ".")):
            raise ValueError(f"invalid checkpoint file name {name!r}")
        write_atomic(fs, f"{path}/{name}", data)
        entries[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = BlobManifest(
        files=entries,
        inputs=dict(inputs),
        config_hash=config_hash,
        code_version=code_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        meta=dict(meta or {}),
    )
    write_atomic(fs, f"{path}/{BLOB_MANIFEST}", manifest.to_json())
    return manifest


def read_blob_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> BlobManifest:
    """The manifest of a finished file set.

    Raises:
        DataError: no manifest (unfinished or missing).
    """
    fs, path = filesystem_for(uri, storage_options)
    where = f"{path}/{BLOB_MANIFEST}"
    if not exists(fs, where):
        raise DataError(f"{uri} is not a finished checkpoint (no {BLOB_MANIFEST}); rerun the update stage")
    return BlobManifest.from_json(read_bytes(fs, where), where)


@names_io_failures("reading checkpoint")
def read_blobs(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[BlobManifest, dict[str, bytes]]:
    """Read every file of a finished set, verifying sizes and checksums.

    Raises:
        DataError: unfinished set, a file missing, or a checksum mismatch (corruption).
    """
    manifest = read_blob_manifest(uri, storage_options)
    fs, path = filesystem_for(uri, storage_options)
    out: dict[str, bytes] = {}
    for name, entry in manifest.files.items():
        try:
            data = read_bytes(fs, f"{path}/{name}")
        except FileNotFoundError:
            raise DataError(f"{uri}: file {name!r} listed in the manifest is missing") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DataError(f"{uri}: file {name!r} does not match its checksum (corrupted)")
        out[name] = data
    return manifest, out
