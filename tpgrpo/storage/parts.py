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

    def progress(self) -> None:
        """Tells the sink that bytes were written (it may hash them meanwhile)."""

    def close(self) -> tuple[int, str]:
        """Makes the file durable and complete; returns `(size, sha256 hex)`."""

    def abort(self) -> None:
        """Discards the file."""


class _LocalSink:
    """Native pyarrow output stream, hashed alongside by a thread that follows the file as it grows.

    The Parquet writer only appends, so every byte below the file's current size is final. A
    follower thread reads those bytes back from the page cache (`preadv` into one reused buffer)
    and feeds SHA-256 while pyarrow encodes and the kernel writes back, both without the GIL; on
    close, `fsync` and the last stretch of hashing overlap too. Hashing inside the write path
    instead would add a copy per write and serialise the hash with the writes.
    """

    _CHUNK = 8 << 20

    def __init__(self, path: str):
        self._path = path
        self._stream = pafs.LocalFileSystem().open_output_stream(path)
        self._fd = os.open(path, os.O_RDONLY)
        self._digest = hashlib.sha256()
        self._hashed = 0
        self._done = threading.Event()
        self._wake = threading.Event()
        self._errors: list[OSError] = []
        self._follower = threading.Thread(target=self._follow, name="tpgrpo-part-hash", daemon=True)
        self._follower.start()

    @property
    def stream(self) -> Any:
        return self._stream

    def tell(self) -> int:
        return int(self._stream.tell())

    def progress(self) -> None:
        """Wakes the hashing thread (new bytes were written)."""
        self._wake.set()

    def _follow(self) -> None:
        buffer = memoryview(bytearray(self._CHUNK))
        try:
            while True:
                finished = self._done.is_set()  # read before the size: then the size is final
                size = os.fstat(self._fd).st_size
                while self._hashed < size:
                    n = os.preadv(self._fd, [buffer[: min(self._CHUNK, size - self._hashed)]], self._hashed)
                    if n <= 0:
                        break
                    self._digest.update(buffer[:n])  # releases the GIL
                    self._hashed += n
                if finished:
                    return
                self._wake.wait(0.02)
                self._wake.clear()
        except OSError as error:
            self._errors.append(error)

    def _stop(self) -> None:
        self._done.set()
        self._wake.set()
        self._follower.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> tuple[int, str]:
        self._stream.close()
        self._done.set()
        self._wake.set()
        try:
            os.fsync(self._fd)  # waits for the disk while the follower hashes the rest
        finally:
            self._stop()
        if self._errors:
            raise self._errors[0]
        size = os.path.getsize(self._path)
        if self._hashed != size:
            raise OSError(f"hashed {self._hashed} of {size} bytes of {self._path}")
        return size, self._digest.hexdigest()

    def abort(self) -> None:
        if not self._stream.closed:
            self._stream.close()
        self._stop()
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

    def progress(self) -> None:
        pass  # hashed as it is written

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
    # a CRC-32 per page, checked on every read: a flipped bit is an error, never silently wrong data
    return {
        "compression": compression,
        "use_dictionary": dictionary,
        "write_statistics": statistics,
        "write_page_checksum": True,
    }


def rows_per_group(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group so that one holds about `target_bytes` of Arrow data (at least 1)."""
    if table.num_rows == 0:
        return 1
    row_bytes = max(1, table.nbytes // table.num_rows)
    return max(1, min(1 << 20, target_bytes // row_bytes))
