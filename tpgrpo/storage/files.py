"""Small filesystem operations with the guarantees datasets rely on.

Listings always bypass fsspec's listing cache (another process may have written since), and
`write_atomic` makes a file appear whole or not at all: temp file + fsync + rename locally, a
single PUT on S3 (an object is visible only once its upload completed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

F = TypeVar("F", bound=Callable[..., Any])


class StorageIOError(OSError):
    """A storage operation that failed (on S3: after the client's own retries), naming what failed.

    An `OSError`, so the flows' tasks retry it (`retry_on_io`); the CLI prints it as one line.
    """


def names_io_failures(action: str) -> Callable[[F], F]:
    """Decorates a storage operation so that an I/O failure names the operation and its URI.

    The URI is the first argument when it is a string, else its `uri` attribute (a writer).
    `FileNotFoundError` passes unchanged (callers rely on it); every other `OSError` becomes a
    `StorageIOError` "<action> <uri> failed: <cause>" chained to the original.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (FileNotFoundError, StorageIOError):
                raise
            except OSError as err:
                first = args[0] if args else kwargs.get("uri", "?")
                uri = first if isinstance(first, str) else getattr(first, "uri", "?")
                cause = err.strerror or str(err) or type(err).__name__
                raise StorageIOError(err.errno, f"{action} {uri} failed: {cause}") from err

        return wrapper  # type: ignore[return-value]

    return decorate


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is the local filesystem."""
    return isinstance(fs, LocalFileSystem)


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow filesystem to read and write through: native for local disk, else wrapping fsspec."""
    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def list_files(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int] | None:
    """Lists the plain files directly inside a directory, fresh from the store.

    Args:
        fs (`fsspec.AbstractFileSystem`): the filesystem.
        path (`str`): the directory.

    Returns:
        `dict[str, int] | None`: file name -> size in bytes (subdirectories left out), or `None`
        when the directory does not exist (on S3: no object under the prefix).
    """
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return None
    if is_local(fs) and not os.path.isdir(path):
        return None
    files: dict[str, int] = {}
    for entry in entries:
        if entry["type"] == "file":
            files[entry["name"].rstrip("/").rsplit("/", 1)[-1]] = int(entry["size"])
    return files


def list_dirs(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Names of the subdirectories directly inside `path` (empty when it does not exist)."""
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether a file exists, bypassing fsspec's listing cache."""
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """Reads a whole (small) file."""
    data = fs.cat_file(path)
    assert isinstance(data, bytes)
    return data


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Writes a small file so that readers see the old state or the whole new file, never a part.

    Args:
        fs (`fsspec.AbstractFileSystem`): the filesystem.
        path (`str`): destination; its directory is created locally if needed.
        data (`bytes`): the content.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)  # one PUT: S3 shows the object only once complete
        fs.invalidate_cache(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Makes a local directory's entries (new or renamed files) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_file(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Removes a file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
    fs.invalidate_cache(path)


def remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Removes a directory and everything under it, if it exists."""
    if exists(fs, path):
        fs.rm(path, recursive=True)
    fs.invalidate_cache(path)


def move(fs: fsspec.AbstractFileSystem, source: str, destination: str) -> None:
    """Moves a file over `destination` (atomic rename locally; copy then delete on S3)."""
    if is_local(fs):
        os.replace(source, destination)
    else:
        fs.mv(source, destination)
    fs.invalidate_cache(source)
    fs.invalidate_cache(destination)
