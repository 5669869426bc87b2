"""`_MANIFEST.json`: the record that makes a dataset finished.

A dataset directory holds `part-SSSSS-IIIII.parquet` files and, once finished, `_MANIFEST.json`,
written last and atomically. Its fields:

- `format`: `"tpgrpo.dataset/1"`.
- `schema`: `{name, version, fields: [{name, type, nullable}]}` of the declared schema.
- `rows`, `parts`: total rows; every part with `path` (relative), `rows`, `bytes`, `sha256`, `shard`.
- `inputs`: input name -> `hash` of that input dataset's manifest (lineage).
- `config_hash`: SHA-256 of the stage's resolved config; `code_version`; `created` (UTC ISO 8601).
- `model_evals`: model evaluations spent producing the dataset.
- `timings` (seconds), `metrics` (summary metrics, JSON scalars).
- `retention`: null, or what retention dropped (columns, when, bytes before/after).
- `hash`: SHA-256 of the canonical JSON of `{schema, rows, parts, inputs, config_hash}` at
  finalisation: the dataset's identity, which downstream manifests record in their `inputs`.
  Retention keeps it (it only nulls latent payloads, which no other dataset is derived from
  after the fact), and records what changed in `retention`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import pyarrow as pa

from tpgrpo.errors import DataError
from tpgrpo.schemas import SchemaRef
from tpgrpo.storage.files import exists, read_bytes, write_atomic
from tpgrpo.storage.provenance import canonical_json, sha256_hex
from tpgrpo.storage.uri import filesystem_for

MANIFEST_NAME = "_MANIFEST.json"
FORMAT = "tpgrpo.dataset/1"


@dataclass(frozen=True)
class PartInfo:
    """One Parquet part file of a dataset.

    Args:
        path (`str`): file name relative to the dataset directory.
        rows (`int`): rows in the file.
        bytes (`int`): file size.
        sha256 (`str`): hex SHA-256 of the file's bytes.
        shard (`int`): the shard that wrote it.
    """

    path: str
    rows: int
    bytes: int
    sha256: str
    shard: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "shard": self.shard,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartInfo:
        return cls(
            str(data["path"]), int(data["rows"]), int(data["bytes"]), str(data["sha256"]), int(data["shard"])
        )


def schema_fields(schema: pa.Schema) -> list[dict[str, Any]]:
    """The columns of a schema as JSON: `[{name, type, nullable}]`."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def content_hash(
    schema: SchemaRef, rows: int, parts: tuple[PartInfo, ...], inputs: Mapping[str, str], config_hash: str
) -> str:
    """The identity of a dataset's content and lineage (see the module docstring)."""
    return sha256_hex(
        canonical_json(
            {
                "schema": {"name": schema.name, "version": schema.version},
                "rows": rows,
                "parts": [p.to_json() for p in parts],
                "inputs": dict(inputs),
                "config_hash": config_hash,
            }
        )
    )


@dataclass(frozen=True)
class Manifest:
    """The parsed `_MANIFEST.json` of a finished dataset (fields: see the module docstring)."""

    schema: SchemaRef
    fields: tuple[dict[str, Any], ...]
    rows: int
    parts: tuple[PartInfo, ...]
    inputs: dict[str, str]
    config_hash: str
    code_version: str
    created: str
    hash: str
    model_evals: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    retention: dict[str, Any] | None = None

    @property
    def total_bytes(self) -> int:
        """Total size of the parts."""
        return sum(p.bytes for p in self.parts)

    def with_parts(self, parts: tuple[PartInfo, ...], retention: dict[str, Any]) -> Manifest:
        """A copy with rewritten parts and a retention record; `hash` is kept (see module docstring)."""
        return replace(self, parts=parts, retention=retention)

    def to_json(self) -> bytes:
        """Serialises to indented JSON (finite floats only)."""
        data = {
            "format": FORMAT,
            "schema": {"name": self.schema.name, "version": self.schema.version, "fields": list(self.fields)},
            "rows": self.rows,
            "parts": [p.to_json() for p in self.parts],
            "inputs": self.inputs,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
            "created": self.created,
            "model_evals": self.model_evals,
            "timings": self.timings,
            "metrics": self.metrics,
            "retention": self.retention,
            "hash": self.hash,
        }
        try:
            return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False).encode()
        except (ValueError, TypeError) as error:
            raise DataError(f"manifest metrics/timings must be finite JSON scalars: {error}") from error

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parses a manifest.

        Args:
            data (`bytes`): the file's content.
            where (`str`): its location, for error messages.

        Raises:
            `DataError`: not a valid manifest.
        """
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise DataError(
                    f"{where}: unknown manifest format {raw.get('format')!r}, expected {FORMAT!r}"
                )
            return cls(
                schema=SchemaRef(str(raw["schema"]["name"]), int(raw["schema"]["version"])),
                fields=tuple(raw["schema"]["fields"]),
                rows=int(raw["rows"]),
                parts=tuple(PartInfo.from_json(p) for p in raw["parts"]),
                inputs={str(k): str(v) for k, v in raw["inputs"].items()},
                config_hash=str(raw["config_hash"]),
                code_version=str(raw["code_version"]),
                created=str(raw["created"]),
                hash=str(raw["hash"]),
                model_evals=int(raw["model_evals"]),
                timings=dict(raw["timings"]),
                metrics=dict(raw["metrics"]),
                retention=raw["retention"],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{where}: malformed manifest ({type(error).__name__}: {error})") from error


def load_manifest(fs: fsspec.AbstractFileSystem, path: str) -> Manifest | None:
    """Reads the manifest of the dataset directory `path`, or `None` when it has none."""
    file = f"{path}/{MANIFEST_NAME}"
    if not exists(fs, file):
        return None
    try:
        data = read_bytes(fs, file)
    except FileNotFoundError:
        return None
    return Manifest.from_json(data, file)


def store_manifest(fs: fsspec.AbstractFileSystem, path: str, manifest: Manifest) -> None:
    """Writes `manifest` into the dataset directory `path`, atomically."""
    write_atomic(fs, f"{path}/{MANIFEST_NAME}", manifest.to_json())


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Reads the manifest of a finished dataset.

    Args:
        uri (`str`): the dataset directory.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.

    Raises:
        `DataError`: no manifest (the dataset is unfinished or absent) or a malformed one.
    """
    fs, path = filesystem_for(uri, storage_options)
    manifest = load_manifest(fs, path)
    if manifest is None:
        raise DataError(
            f"{uri} is not a finished dataset (no {MANIFEST_NAME}): its stage has not run or was "
            "interrupted; run the stage (it clears the debris and redoes it)"
        )
    return manifest


def manifest_hash(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The identity hash of a finished dataset, to record as an input of datasets built from it.

    Raises:
        `DataError`: the dataset is not finished.
    """
    return read_manifest(uri, storage_options).hash
