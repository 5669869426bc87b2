"""Retention: drop the latent tensors of old iterations, keep everything else.

Stored runs are dominated by `rollouts.states` / `ode_states` (about 5.5 MB per trajectory at
SD3.5 size in float32). `drop_latents` nulls those payloads in the rollouts of all but the last
`keep_last` iterations; images, rewards, annotations and all other rollout columns stay, and the
datasets stay readable (the payload columns are nullable; their dtype/shape columns are kept).

Crash safety: rewritten parts go to `<dataset>/_retention/` (invisible to pyarrow discovery and
`*.parquet` globs) together with the new manifest, which is the commit point; then each part is
moved over its original and the new manifest replaces the old one. A run interrupted before the
staged manifest exists is redone from scratch; one interrupted after it resumes the moves. In
between, readers refuse the dataset (parts do not match the manifest) and name this remedy.
The manifest's `hash` is kept; its `retention` entry records what was dropped, when and how much
space it freed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tpgrpo.errors import UserError
from tpgrpo.schemas import SchemaRef, schema_for
from tpgrpo.storage.conform import conform
from tpgrpo.storage.files import arrow_filesystem, exists, is_local, move, remove_tree
from tpgrpo.storage.layout import RunLayout
from tpgrpo.storage.manifest import Manifest, PartInfo, load_manifest, store_manifest
from tpgrpo.storage.parts import open_part_sink, parquet_options
from tpgrpo.storage.provenance import code_version
from tpgrpo.storage.reader import check_parts, check_schema
from tpgrpo.storage.uri import filesystem_for

STAGING_DIR = "_retention"
LATENT_COLUMNS = ("states", "ode_states")


@dataclass(frozen=True)
class RetentionResult:
    """What retention did to one dataset.

    Args:
        uri (`str`): the dataset.
        bytes_before (`int`): size of its parts before (any) retention.
        bytes_after (`int`): size now.
    """

    uri: str
    bytes_before: int
    bytes_after: int


def _rewrite_part(
    fs: fsspec.AbstractFileSystem, source: str, target: str, schema: pa.Schema, columns: Sequence[str]
) -> tuple[int, str]:
    keep = [name for name in schema.names if name not in columns]
    with arrow_filesystem(fs).open_input_file(source) as handle:
        parquet = pq.ParquetFile(handle)
        sink = open_part_sink(fs, target)
        writer = pq.ParquetWriter(sink.stream, schema, **parquet_options(schema))
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=keep)  # the dropped payloads are never read
            writer.write_table(conform(table, schema), row_group_size=max(1, table.num_rows))
        writer.close()
    return sink.close()


def _commit(fs: fsspec.AbstractFileSystem, path: str, staging: str, manifest: Manifest, uri: str) -> None:
    for part in manifest.parts:
        staged = f"{staging}/{part.path}"
        if exists(fs, staged):  # parts moved before an interruption are already in place
            move(fs, staged, f"{path}/{part.path}")
    check_parts(fs, path, manifest, uri)
    store_manifest(fs, path, manifest)
    remove_tree(fs, staging)


def drop_columns(
    uri: str,
    schema_name: str,
    columns: Sequence[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> RetentionResult | None:
    """Nulls nullable payload columns of a finished dataset, crash-safely (see module docstring).

    Args:
        uri (`str`): the dataset directory.
        schema_name (`str`): its schema.
        columns (`Sequence[str]`): nullable columns to null.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.

    Returns:
        `RetentionResult | None`: what changed, or `None` when the dataset is not finished or the
        columns were already dropped.

    Raises:
        `UserError`: a column is unknown or not nullable.
        `DataError`: wrong schema, or parts not matching the manifest.
    """
    schema = schema_for(schema_name)
    bad = [c for c in columns if c not in schema.names or not schema.field(c).nullable]
    if bad:
        raise UserError(f"cannot drop column(s) {bad} of {schema_name!r}: unknown or not nullable")
    fs, path = filesystem_for(uri, storage_options)
    staging = f"{path}/{STAGING_DIR}"
    staged = load_manifest(fs, staging)
    if staged is not None:  # interrupted after its commit point: finish the moves
        _commit(fs, path, staging, staged, uri)
        return RetentionResult(
            uri, int((staged.retention or {}).get("bytes_before", staged.total_bytes)), staged.total_bytes
        )
    remove_tree(fs, staging)  # interrupted before its commit point: start over
    manifest = load_manifest(fs, path)
    if manifest is None:
        return None
    check_schema(manifest.schema, SchemaRef.of(schema), uri)
    already = set((manifest.retention or {}).get("dropped", []))
    if set(columns) <= already:
        return None
    check_parts(fs, path, manifest, uri)
    if is_local(fs):
        fs.makedirs(staging, exist_ok=True)
    parts: list[PartInfo] = []
    for part in manifest.parts:
        size, sha256 = _rewrite_part(fs, f"{path}/{part.path}", f"{staging}/{part.path}", schema, columns)
        parts.append(replace(part, bytes=size, sha256=sha256))
    bytes_before = int((manifest.retention or {}).get("bytes_before", manifest.total_bytes))
    retention = {
        "dropped": sorted(already | set(columns)),
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "bytes_before": bytes_before,
        "bytes_after": sum(p.bytes for p in parts),
    }
    new = manifest.with_parts(tuple(parts), retention)
    store_manifest(fs, staging, new)  # commit point
    _commit(fs, path, staging, new, uri)
    return RetentionResult(uri, bytes_before, new.total_bytes)


def drop_latents(layout: RunLayout, keep_last: int) -> list[RetentionResult]:
    """Drops `states` / `ode_states` payloads from the rollouts of all but the last `keep_last` iterations.

    Args:
        layout (`RunLayout`): the run (its `storage_options` are used).
        keep_last (`int`): how many of the latest iterations keep their latents (>= 0).

    Returns:
        `list[RetentionResult]`: one per rollouts dataset that changed (unfinished datasets and
        those already dropped are left alone).
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise UserError(f"keep_last must be an integer >= 0, got {keep_last!r}")
    iterations = layout.list_iterations()
    old = iterations[: len(iterations) - keep_last] if keep_last else iterations
    results = []
    for iteration in old:
        result = drop_columns(
            layout.rollouts(iteration), "rollouts", LATENT_COLUMNS, storage_options=layout.storage_options
        )
        if result is not None:
            results.append(result)
    return results
