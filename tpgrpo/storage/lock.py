"""A lease on a run: one driving process at a time, with a stale-lock rule.

The lock file `<run>/run.lock` holds the owner (host, pid, a random token) and a heartbeat time
the owner refreshes every `heartbeat_s`. Another process refuses to start while the lease is
fresh; a lease whose heartbeat is older than `stale_after_s` (its owner died, e.g. `kill -9`, or
its machine went away) is taken over. On the same host a lease whose pid no longer exists is stale
at once.

Acquisition on local (or NFS-like shared) disk creates the lock file exclusively (`O_CREAT |
O_EXCL`): of two processes starting together exactly one creates it, however the scheduler
interleaves them. A stale lock is removed (only while it still holds the stale owner's token) and
the exclusive create retried.

On S3 the same holds through conditional writes (AWS S3 since 2024, MinIO, moto): the lock object
is created with `If-None-Match: *`, so exactly one of racing creators succeeds; a stale lock is
taken over with a PUT conditional on the ETag it was judged stale by (`If-Match`), so exactly one
of racing takers succeeds; the heartbeat rewrites it only over its own last write (`If-Match`).
A store that ignores `If-None-Match` is detected (a second conditional create over the new object
succeeds) and falls back to writing, pausing and reading back, where the last writer wins.

Locally, the heartbeat rewrites the lock only while it still holds this owner's token, so a lease
taken over is never clobbered.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from tpgrpo.errors import RunLockedError
from tpgrpo.storage.files import exists, fsync_dir, is_local, read_bytes, remove_file, write_atomic
from tpgrpo.storage.uri import filesystem_for

HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0

fs_local = LocalFileSystem()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(owner: Mapping[str, Any], now: float, stale_after_s: float) -> bool:
    if now - float(owner.get("heartbeat", 0.0)) > stale_after_s:
        return True
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


def _holder(fs: Any, path: str) -> dict[str, Any]:
    """The lock's content ({} when absent, unreadable or half-written)."""
    try:
        held = json.loads(read_bytes(fs, path))
    except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError):
        return {}
    return held if isinstance(held, dict) else {}


def _locked_error(held: Mapping[str, Any], uri: str, stale_after_s: float) -> RunLockedError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("since", 0))))
    return RunLockedError(
        f"run is locked by pid {held.get('pid')} on {held.get('host')} since {since} ({uri}); "
        f"wait for it to finish, or remove the lock file if that process is gone "
        f"(it is taken over automatically {int(stale_after_s)} s after its last heartbeat)"
    )


def _acquire_local(path: str, owner: Mapping[str, Any], uri: str, stale_after_s: float) -> None:
    """Create the lock file exclusively; take over a stale one (see the module docstring)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = json.dumps({**owner, "heartbeat": time.time()}).encode()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(fs_local, path)
            if not held:  # being written this instant, or garbage: judge it by its age
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - os.path.getmtime(path) <= stale_after_s:
                        raise RunLockedError(
                            f"run lock {uri} is being taken by another process; try again"
                        ) from None
            elif not _is_stale(held, time.time(), stale_after_s):
                raise _locked_error(held, uri, stale_after_s) from None
            if _holder(fs_local, path).get("token") == held.get("token"):  # still the stale one
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            continue
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path))
        return
    raise RunLockedError(f"another process took the run's lock at the same moment ({uri}); try again")


def _etag(fs: Any, path: str) -> str | None:
    """The lock object's ETag (None when it is gone)."""
    fs.invalidate_cache(path)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return str(info.get("ETag") or info.get("etag") or "") or None


def _put(fs: Any, path: str, data: bytes, **condition: str) -> str | None:
    """One PUT of the lock object; returns its new ETag when the store says."""
    out = fs.pipe_file(path, data, **condition)
    fs.invalidate_cache(path)
    return str(out.get("ETag")) if isinstance(out, dict) and out.get("ETag") else None


def _conditional_writes(fs: Any, path: str, data: bytes) -> bool:
    """Whether the store honours If-None-Match: a conditional create over the object just created
    (with the same content, so harmless) must be refused. Older S3-compatible stores ignore it."""
    try:
        _put(fs, path, data, mode="create")
    except FileExistsError:
        return True
    return False


def _acquire_s3(
    fs: Any, path: str, owner: Mapping[str, Any], uri: str, stale_after_s: float
) -> dict[str, Any]:
    """Create the lock object only if none exists (PUT with If-None-Match: *): of two processes
    starting together exactly one creates it. A stale lock is taken over with a PUT conditional on
    the ETag it was judged by (If-Match), so of two processes taking it over exactly one succeeds.

    Returns:
        `{"etag": …, "conditional": bool}`: the lease's ETag (the heartbeat's If-Match) and whether
        the store honours conditional writes (if not — an older S3-compatible store — the lease
        falls back to writing, pausing and reading back: the last writer wins).
    """
    data = json.dumps({**owner, "heartbeat": time.time()}).encode()
    if exists(fs, path):  # a live lease is refused without a write (a store ignoring If-None-Match
        held = _holder(fs, path)  # would otherwise let the create overwrite it)
        if held and not _is_stale(held, time.time(), stale_after_s):
            raise _locked_error(held, uri, stale_after_s)
    for _ in range(3):
        try:
            etag = _put(fs, path, data, mode="create")
        except FileExistsError:
            judged = _etag(fs, path)
            held = _holder(fs, path)
            if held.get("token") == owner["token"]:  # ours: a retried PUT whose first answer was lost
                return {"etag": _etag(fs, path), "conditional": True}
            if judged is None:  # released meanwhile: try again
                continue
            if not held:  # being written this instant, or garbage: judge it by its age
                with contextlib.suppress(FileNotFoundError):
                    modified = fs.info(path).get("LastModified")
                    age = time.time() - modified.timestamp() if modified is not None else 0.0
                    if age <= stale_after_s:
                        raise RunLockedError(
                            f"run lock {uri} is being taken by another process; try again"
                        ) from None
            elif not _is_stale(held, time.time(), stale_after_s):
                raise _locked_error(held, uri, stale_after_s) from None
            try:  # take over the stale lease only if it is still the version judged stale
                etag = _put(fs, path, data, IfMatch=judged)
            except OSError:  # 412 Precondition Failed, or 404 when it was released
                continue  # another process took it over (or released it) first
            if _holder(fs, path).get("token") != owner["token"]:
                continue
            return {"etag": etag or _etag(fs, path), "conditional": True}
        if _conditional_writes(fs, path, data):
            return {"etag": etag or _etag(fs, path), "conditional": True}
        time.sleep(0.5)  # the store ignores If-None-Match: let a racing writer's PUT land, read back
        if _holder(fs, path).get("token") != owner["token"]:
            raise RunLockedError(f"another process took the run's lock at the same moment ({uri}); try again")
        return {"etag": _etag(fs, path), "conditional": False}
    raise RunLockedError(f"another process took the run's lock at the same moment ({uri}); try again")


@contextmanager
def run_lock(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
) -> Iterator[dict[str, Any]]:
    """Hold the lease `uri` for the duration of the block.

    Raises:
        RunLockedError: another live process holds it (names host, pid and since when).
    """
    fs, path = filesystem_for(uri, storage_options)
    token = secrets.token_hex(8)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "since": time.time()}
    lease: dict[str, Any] = {"etag": None, "conditional": False}
    if is_local(fs):
        _acquire_local(path, owner, uri, stale_after_s)
    else:
        lease = _acquire_s3(fs, path, owner, uri, stale_after_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            data = json.dumps({**owner, "heartbeat": time.time()}).encode()
            # a missed heartbeat only shortens the lease; the next one retries
            with contextlib.suppress(OSError):
                if lease["conditional"] and lease["etag"]:
                    try:  # only over our own last write: a lease taken over is never clobbered
                        lease["etag"] = _put(fs, path, data, IfMatch=lease["etag"]) or _etag(fs, path)
                    except OSError:  # 412: rewritten by another process since our last beat
                        if _holder(fs, path).get("token") != token:
                            return  # taken over: the lease is lost, stop beating
                        lease["etag"] = _etag(fs, path)  # ours still (a lost answer): beat on from here
                elif _holder(fs, path).get("token") == token:  # taken over: never clobber the new owner
                    write_atomic(fs, path, data)

    thread = threading.Thread(target=beat, name="tpgrpo-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        thread.join(timeout=5)
        if _holder(fs, path).get("token") == token:
            remove_file(fs, path)


def lease_holder(
    uri: str, storage_options: Mapping[str, Any] | None = None, *, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any] | None:
    """The owner of a live lease on `uri` (host, pid, since, heartbeat), or `None` when free or stale.

    For status displays; acquiring goes through `run_lock`.
    """
    fs, path = filesystem_for(uri, storage_options)
    if not exists(fs, path):
        return None
    held = _holder(fs, path)
    if not held or _is_stale(held, time.time(), stale_after_s):
        return None
    return held
