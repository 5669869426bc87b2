"""Part files: names, per-shard records, byte sinks that checksum, and Parquet write options.

Shard `s` writes `part-{s:05d}-{i:05d}.parquet` (i = 0, 1, … as parts rotate) and, once all its
parts are closed, `_SHARD-{s:05d}.json` listing them. `finalize_dataset` turns the shard records
into the manifest. Names starting with `_` or `.` are ignored by pyarrow's dataset discovery and
by DuckDB's `*.parquet` glob, so plain readers see only parts.

Parquet options (chosen for tensor blobs; see bench/README.md): binary columns (latents, PNGs) are
stored uncompressed (float latents barely compress and PNGs already are), without dictionary and
without statistics (min/max of megabyte blobs cost time and say nothing); all other columns use
zstd, dictionaries and statistics. Row groups target `ROW_GROUP_BYTES` of Arrow data.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs

from tpgrpo.errors import DataError
from tpgrpo.schemas import SchemaRef
from tpgrpo.storage.files import is_local, remove_file
from tpgrpo.storage.manifest import PartInfo

PART_PATTERN = re.compile(r"part-(\d{5})-(\d{5})\.parquet")
SHARD_RECORD_PATTERN = re.compile(r"_SHARD-(\d{5})\.json")
ROW_GROUP_BYTES = 128 << 20  # Arrow bytes per row group: bounds reader memory per batch
MAX_PART_BYTES = 1 << 30  # rotate to a new part file beyond this many bytes
MAX_SHARD = 99_999


def part_name(shard: int, index: int) -> str:
    """`part-SSSSS-IIIII.parquet`."""
    return f"part-{shard:05d}-{index:05d}.parquet"


def shard_record_name(shard: int) -> str:
    """`_SHARD-SSSSS.json`."""
    return f"_SHARD-{shard:05d}.json"


def part_shard(name: str) -> int | None:
    """The shard of a part file name, or `None` when `name` is not a part."""
    match = PART_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def is_data_file(name: str) -> bool:
    """Whether plain readers (`*.parquet` globs) would read this file."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


@dataclass(frozen=True)
class ShardRecord:
    """What one shard wrote, stored as `_SHARD-SSSSS.json` when the shard finished.

    Args:
        shard (`int`): the shard index.
        schema (`SchemaRef`): the schema it wrote.
        parts (`tuple[PartInfo, ...]`): its part files.
        write_s (`float`): seconds spent in `write` and `close`.
    """

    shard: int
    schema: SchemaRef
    parts: tuple[PartInfo, ...]
    write_s: float

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "shard": self.shard,
                "schema": {"name": self.schema.name, "version": self.schema.version},
                "parts": [p.to_json() for p in self.parts],
                "write_s": self.write_s,
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> ShardRecord:
        try:
            raw = json.loads(data)
            return cls(
                shard=int(raw["shard"]),
                schema=SchemaRef(str(raw["schema"]["name"]), int(raw["schema"]["version"])),
                parts=tuple(PartInfo.from_json(p) for p in raw["parts"]),
                write_s=float(raw["write_s"]),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{where}: malformed shard record ({type(error).__name__}: {error})") from error


class PartSink(Protocol):
    """A byte sink for one part file; `close` returns its size and SHA-256."""

    @property
    def stream(self) -> Any:
        """What `pyarrow.parquet.ParquetWriter` writes into."""

    def tell(self) -> int:
        """Bytes written so far."""

    def close(self) -> tuple[int, str]:
        """Makes the file durable and complete; returns `(size, sha256 hex)`."""

    def abort(self) -> None:
        """Discards the file."""


class _LocalSink:
    """Native pyarrow output stream; on close, fsync and SHA-256 run in parallel.

    Hashing after the fact reads the file back from the page cache through `mmap` (no copy) while
    another thread waits for the disk in `fsync`; on two cores this costs little beyond the raw
    write, where hashing inside the write path would add a copy per write and serialise the hash.
    """

    def __init__(self, path: str):
        self._path = path
        self._stream = pafs.LocalFileSystem().open_output_stream(path)

    @property
    def stream(self) -> Any:
        return self._stream

    def tell(self) -> int:
        return int(self._stream.tell())

    def close(self) -> tuple[int, str]:
        self._stream.close()
        size = os.path.getsize(self._path)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            errors: list[OSError] = []

            def sync() -> None:
                try:
                    os.fsync(fd)
                except OSError as error:
                    errors.append(error)

            syncer = threading.Thread(target=sync, name="tpgrpo-fsync")
            syncer.start()
            digest = hashlib.sha256()
            if size:
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                    digest.update(mapped)  # releases the GIL; runs alongside fsync
            syncer.join()
            if errors:
                raise errors[0]
        finally:
            os.close(fd)
        return size, digest.hexdigest()

    def abort(self) -> None:
        if not self._stream.closed:
            self._stream.close()
        if os.path.exists(self._path):
            os.remove(self._path)


class _HashingFile:
    """A write-only file wrapper that counts and hashes what passes through (for remote stores)."""

    def __init__(self, file: Any):
        self._file = file
        self._digest = hashlib.sha256()
        self._size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self._size += len(data)
        self._file.write(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        # pyarrow calls this when the ParquetWriter closes; the sink closes the real file
        self.closed = True


class _FsspecSink:
    """An fsspec file (S3: multipart upload, visible only once complete) behind a hashing wrapper."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str):
        self._fs = fs
        self._path = path
        self._file = fs.open(path, "wb")
        self._hashing = _HashingFile(self._file)

    @property
    def stream(self) -> Any:
        return self._hashing

    def tell(self) -> int:
        return self._hashing.tell()

    def close(self) -> tuple[int, str]:
        self._file.close()
        self._fs.invalidate_cache(self._path)
        return self._hashing.tell(), self._hashing._digest.hexdigest()

    def abort(self) -> None:
        discard = getattr(self._file, "discard", None)
        if callable(discard):
            discard()  # abandon the multipart upload: the object never appears
            self._file.closed = True  # or its finaliser would try to upload the discarded buffer
        else:
            self._file.close()
        remove_file(self._fs, self._path)


def open_part_sink(fs: fsspec.AbstractFileSystem, path: str) -> PartSink:
    """Opens a sink for one new part file at `path` (the directory must exist locally)."""
    return _LocalSink(path) if is_local(fs) else _FsspecSink(fs, path)


def _leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    path = f"{prefix}{field.name}"
    if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
        return _leaf_paths(field.type.value_field.with_name("element"), f"{path}.list.")
    if pa.types.is_struct(field.type):
        return [leaf for child in field.type for leaf in _leaf_paths(child, f"{path}.")]
    return [path]


def _is_blob(field: pa.Field) -> bool:
    return pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Keyword arguments for `pyarrow.parquet.ParquetWriter` (see the module docstring).

    Args:
        schema (`pa.Schema`): the dataset schema.

    Returns:
        `dict[str, Any]`: per-column `compression`, `use_dictionary`, `write_statistics`.
    """
    compression: dict[str, str] = {}
    dictionary: list[str] = []
    statistics: list[str] = []
    for f in schema:
        for leaf in _leaf_paths(f):
            if _is_blob(f):
                compression[leaf] = "NONE"
            else:
                compression[leaf] = "ZSTD"
                dictionary.append(leaf)
                statistics.append(leaf)
    return {"compression": compression, "use_dictionary": dictionary, "write_statistics": statistics}


def rows_per_group(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group so that one holds about `target_bytes` of Arrow data (at least 1)."""
    if table.num_rows == 0:
        return 1
    row_bytes = max(1, table.nbytes // table.num_rows)
    return max(1, min(1 << 20, target_bytes // row_bytes))
