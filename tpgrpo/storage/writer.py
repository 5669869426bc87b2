"""Writing datasets: shard writers, then one `finalize_dataset` that writes the manifest last.

Protocol for a stage with N shards (threads, processes or machines):

1. the flow checks the output with `tpgrpo.storage.state.prepare_output` (skip / clear / replace);
2. each shard `s` writes through `DatasetWriter(uri, name, shard=s)`, which first removes the
   shard's own leftovers (a restarted shard task is idempotent), writes
   `part-SSSSS-IIIII.parquet` files and, on close, `_SHARD-SSSSS.json`;
3. once every shard closed, one `finalize_dataset` checks the parts against the shard records
   and writes `_MANIFEST.json`, atomically, last. Only then is the dataset finished.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import pyarrow.parquet as pq

from tpgrpo.errors import DataError, UserError
from tpgrpo.schemas import SchemaRef, schema_for
from tpgrpo.storage.conform import Data, conform
from tpgrpo.storage.files import (
    fsync_dir,
    is_local,
    list_files,
    names_io_failures,
    read_bytes,
    remove_file,
    write_atomic,
)
from tpgrpo.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    PartInfo,
    content_hash,
    schema_fields,
    store_manifest,
)
from tpgrpo.storage.parts import (
    MAX_PART_BYTES,
    MAX_SHARD,
    ROW_GROUP_BYTES,
    SHARD_RECORD_PATTERN,
    PartSink,
    ShardRecord,
    is_data_file,
    open_part_sink,
    parquet_options,
    part_name,
    part_shard,
    rows_per_group,
    shard_record_name,
)
from tpgrpo.storage.provenance import code_version
from tpgrpo.storage.uri import filesystem_for


def _finished_error(uri: str) -> DataError:
    return DataError(
        f"{uri} is a finished dataset ({MANIFEST_NAME} present); refusing to write into it. "
        "Replace it with --force (tpgrpo.storage.state.replace_safely) if that is intended."
    )


class DatasetWriter:
    """Writes one shard of a dataset as Parquet part files, cast to the declared schema.

    Opening removes this shard's earlier parts and record (a restarted shard starts clean) and
    refuses a finished dataset. Use as a context manager: on an exception the shard's files are
    discarded; on success `close` writes the shard record.

    Args:
        uri (`str`): dataset directory (local path or `s3://…`), from `RunLayout`.
        schema_name (`str`): one of `tpgrpo.schemas.SCHEMAS`.
        shard (`int`, defaults to 0): this writer's shard index, 0 … 99999, unique per dataset.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.
        max_part_bytes (`int`): start a new part file beyond this size.
        max_part_rows (`int`, *optional*): start a new part file beyond this many rows.
        row_group_bytes (`int`): target Arrow bytes per row group.
    """

    def __init__(
        self,
        uri: str,
        schema_name: str,
        *,
        shard: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        max_part_bytes: int = MAX_PART_BYTES,
        max_part_rows: int | None = None,
        row_group_bytes: int = ROW_GROUP_BYTES,
    ):
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard <= MAX_SHARD:
            raise UserError(f"invalid shard {shard!r}: must be an integer in 0 … {MAX_SHARD}")
        if max_part_rows is not None and max_part_rows < 1:
            raise UserError(f"max_part_rows must be >= 1, got {max_part_rows}")
        self.uri = uri
        self.shard = shard
        self._schema = schema_for(schema_name)
        self._ref = SchemaRef.of(self._schema)
        self._fs, self._path = filesystem_for(uri, storage_options)
        self._max_part_bytes = max_part_bytes
        self._max_part_rows = max_part_rows
        self._row_group_bytes = row_group_bytes
        self._options = parquet_options(self._schema)
        self._parts: list[PartInfo] = []
        self._sink: PartSink | None = None
        self._writer: pq.ParquetWriter | None = None
        self._part_rows = 0
        self._elapsed = 0.0
        self._record: ShardRecord | None = None
        self._aborted = False
        self._remove_leftovers()

    @names_io_failures("opening dataset shard")
    def _remove_leftovers(self) -> None:
        listing = list_files(self._fs, self._path) or {}
        if MANIFEST_NAME in listing:
            raise _finished_error(self.uri)
        for name in listing:
            if part_shard(name) == self.shard or name == shard_record_name(self.shard):
                remove_file(self._fs, f"{self._path}/{name}")
        if is_local(self._fs):
            os.makedirs(self._path, exist_ok=True)

    @property
    def rows(self) -> int:
        """Rows written so far."""
        return sum(p.rows for p in self._parts) + self._part_rows

    def _open_part(self) -> pq.ParquetWriter:
        name = part_name(self.shard, len(self._parts))
        self._sink = open_part_sink(self._fs, f"{self._path}/{name}")
        self._writer = pq.ParquetWriter(self._sink.stream, self._schema, **self._options)
        self._part_rows = 0
        return self._writer

    def _close_part(self) -> None:
        assert self._writer is not None and self._sink is not None
        self._writer.close()
        size, sha256 = self._sink.close()
        self._parts.append(
            PartInfo(part_name(self.shard, len(self._parts)), self._part_rows, size, sha256, self.shard)
        )
        self._writer, self._sink, self._part_rows = None, None, 0

    def _room(self) -> int:
        """Rows the current part still takes (0: rotate first)."""
        assert self._sink is not None
        if self._sink.tell() >= self._max_part_bytes:
            return 0
        if self._max_part_rows is None:
            return 1 << 62
        return self._max_part_rows - self._part_rows

    @names_io_failures("writing dataset")
    def write(self, data: Data) -> None:
        """Appends rows, cast to the declared schema (see `tpgrpo.storage.conform`).

        Args:
            data (`pa.Table`, `pa.RecordBatch` or `Mapping[str, Sequence]`): the rows.

        Raises:
            `DataError`: the rows do not fit the schema (nothing is written then).
        """
        if self._record is not None or self._aborted:
            raise DataError(f"shard {self.shard} of {self.uri} is already closed")
        start_time = time.perf_counter()
        table = conform(data, self._schema)
        group = rows_per_group(table, self._row_group_bytes)
        start = 0
        while start < table.num_rows:
            if self._writer is not None and self._room() <= 0:
                self._close_part()
            writer = self._writer if self._writer is not None else self._open_part()
            chunk = table.slice(start, min(group, self._room()))
            writer.write_table(chunk, row_group_size=chunk.num_rows)
            assert self._sink is not None
            self._sink.progress()
            self._part_rows += chunk.num_rows
            start += chunk.num_rows
        self._elapsed += time.perf_counter() - start_time

    @names_io_failures("writing dataset")
    def close(self) -> ShardRecord:
        """Completes the last part and writes the shard record; idempotent.

        A shard that wrote no rows still writes one empty part, so that plain readers of the
        dataset always find at least one file carrying the schema.

        Returns:
            `ShardRecord`: the shard's parts.
        """
        if self._record is not None:
            return self._record
        if self._aborted:
            raise DataError(f"shard {self.shard} of {self.uri} was aborted")
        start_time = time.perf_counter()
        if self._writer is None and not self._parts:
            self._open_part()
        if self._writer is not None:
            self._close_part()
        if is_local(self._fs):
            fsync_dir(self._path)
        elapsed = self._elapsed + time.perf_counter() - start_time
        record = ShardRecord(self.shard, self._ref, tuple(self._parts), round(elapsed, 6))
        write_atomic(self._fs, f"{self._path}/{shard_record_name(self.shard)}", record.to_json())
        self._record = record
        return record

    def abort(self) -> None:
        """Discards everything this shard wrote (no shard record is left)."""
        if self._record is not None or self._aborted:
            return
        self._aborted = True
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.abort()
        for part in self._parts:
            remove_file(self._fs, f"{self._path}/{part.path}")
        self._writer, self._sink = None, None

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _read_shard_records(uri: str, fs: Any, path: str, listing: Mapping[str, int]) -> list[ShardRecord]:
    records = []
    for name in sorted(listing):
        if SHARD_RECORD_PATTERN.fullmatch(name):
            records.append(ShardRecord.from_json(read_bytes(fs, f"{path}/{name}"), f"{uri}/{name}"))
    return records


def _finished_by_this(
    uri: str,
    fs: Any,
    path: str,
    listing: Mapping[str, int],
    ref: SchemaRef,
    inputs: Mapping[str, str],
    config_hash: str,
) -> Manifest | None:
    """The manifest of a finalize that landed although its caller saw it fail (its answer lost after
    the client's retries, then the task retried): the shard records it had yet to remove are still
    there and list exactly the manifest's parts, with the same schema, inputs and config. The records
    are removed now. `None` for any other manifest (a dataset finished before: refused)."""
    from tpgrpo.storage.manifest import load_manifest
    from tpgrpo.storage.reader import check_parts

    records = _read_shard_records(uri, fs, path, listing)
    existing = load_manifest(fs, path)
    if not records or existing is None:
        return None
    recorded = tuple(sorted((p for r in records for p in r.parts), key=lambda p: p.path))
    if (existing.schema, existing.inputs, existing.config_hash, existing.parts) != (
        ref,
        dict(inputs),
        config_hash,
        recorded,
    ):
        return None
    check_parts(fs, path, existing, uri)
    for record in records:
        remove_file(fs, f"{path}/{shard_record_name(record.shard)}")
    return existing


@names_io_failures("finalizing dataset")
def finalize_dataset(
    uri: str,
    schema_name: str,
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    model_evals: int = 0,
    metrics: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    shards: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Checks every shard's parts and writes `_MANIFEST.json`, last and atomically.

    Args:
        uri (`str`): the dataset directory.
        schema_name (`str`): the schema the shards wrote.
        inputs (`Mapping[str, str]`): input name -> `manifest_hash` of that input dataset.
        config_hash (`str`): hash of the stage's resolved config (`config_hash(dict)`).
        model_evals (`int`, defaults to 0): model evaluations spent producing the dataset.
        metrics (`Mapping[str, Any]`, *optional*): summary metrics (finite JSON scalars).
        timings (`Mapping[str, float]`, *optional*): seconds per phase; `write_s` (sum over
            shards) and `finalize_s` are added.
        shards (`int`, *optional*): when given, exactly shards `0 … shards-1` must have finished.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.

    Returns:
        `Manifest`: what was written.

    A retried finalize whose first attempt landed unseen (its shard records still there) returns
    the manifest it wrote.

    Raises:
        `DataError`: already finished (other than by a retried finalize); a shard missing or unfinished
            (parts without a shard record); a recorded part missing or of the wrong size; a shard
            wrote another schema.
    """
    start_time = time.perf_counter()
    schema = schema_for(schema_name)
    ref = SchemaRef.of(schema)
    fs, path = filesystem_for(uri, storage_options)
    listing = list_files(fs, path)
    if listing is None:
        raise DataError(f"{uri}: nothing to finalize, no shard has written there")
    if MANIFEST_NAME in listing:
        done = _finished_by_this(uri, fs, path, listing, ref, inputs, config_hash)
        if done is not None:
            return done
        raise _finished_error(uri)
    records = _read_shard_records(uri, fs, path, listing)
    found = {r.shard for r in records}
    if not records or (shards is not None and found != set(range(shards))):
        expected = f"shards 0 … {shards - 1}" if shards is not None else "at least one shard"
        raise DataError(
            f"{uri}: expected {expected} to have finished, found {sorted(found)}; rerun the missing shards"
        )
    for record in records:
        if record.schema != ref:
            raise DataError(f"{uri}: shard {record.shard} wrote schema {record.schema}, expected {ref}")
    parts = tuple(sorted((p for r in records for p in r.parts), key=lambda p: p.path))
    for part in parts:
        if listing.get(part.path) != part.bytes:
            raise DataError(
                f"{uri}: part {part.path} of shard {part.shard} is missing or has {listing.get(part.path)} "
                f"bytes instead of {part.bytes}; rerun shard {part.shard}"
            )
    recorded = {p.path for p in parts}
    strays = sorted(n for n in listing if is_data_file(n) and n not in recorded)
    if strays:
        unfinished = sorted({part_shard(n) for n in strays}, key=lambda s: -1 if s is None else s)
        raise DataError(
            f"{uri}: files {strays[:5]}{' …' if len(strays) > 5 else ''} belong to no finished shard "
            f"(shards {unfinished} did not finish); rerun them, or clear the dataset and redo the stage"
        )
    rows = sum(p.rows for p in parts)
    all_timings = {"write_s": round(sum(r.write_s for r in records), 6), **(timings or {})}
    all_timings["finalize_s"] = round(time.perf_counter() - start_time, 6)
    manifest = Manifest(
        schema=ref,
        fields=tuple(schema_fields(schema)),
        rows=rows,
        parts=parts,
        inputs=dict(inputs),
        config_hash=config_hash,
        code_version=code_version(),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        hash=content_hash(ref, rows, parts, inputs, config_hash),
        model_evals=int(model_evals),
        timings=all_timings,
        metrics=dict(metrics or {}),
    )
    store_manifest(fs, path, manifest)
    for record in records:  # the manifest now lists every part; the records are redundant
        remove_file(fs, f"{path}/{shard_record_name(record.shard)}")
    return manifest


def write_dataset(
    uri: str,
    schema_name: str,
    data: Data,
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    model_evals: int = 0,
    metrics: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Writes a whole dataset with one writer (shard 0) and finalizes it.

    Args:
        uri (`str`), schema_name (`str`), data (`pa.Table`, `pa.RecordBatch` or mapping): what
            to write where. The other arguments are those of `finalize_dataset`.

    Returns:
        `Manifest`: the finished dataset's manifest.
    """
    with DatasetWriter(uri, schema_name, storage_options=storage_options) as writer:
        writer.write(data)
    return finalize_dataset(
        uri,
        schema_name,
        inputs=inputs,
        config_hash=config_hash,
        model_evals=model_evals,
        metrics=metrics,
        timings=timings,
        shards=1,
        storage_options=storage_options,
    )
