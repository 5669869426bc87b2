"""A lease on a run: one driving process at a time, with a stale-lock rule.

The lock file `<run>/run.lock` holds the owner (host, pid, a random token) and a heartbeat time
the owner refreshes every `heartbeat_s`. Another process refuses to start while the lease is
fresh; a lease whose heartbeat is older than `stale_after_s` (its owner died, e.g. `kill -9`, or
its machine went away) is taken over. On the same host a lease whose pid no longer exists is stale
at once.

Acquisition on local (or NFS-like shared) disk creates the lock file exclusively (`O_CREAT |
O_EXCL`): of two processes starting together exactly one creates it, however the scheduler
interleaves them. A stale lock is removed (only while it still holds the stale owner's token) and
the exclusive create retried. S3 has no exclusive create through s3fs: there the lock is written
and read back after a pause, and only the writer whose token is there won. The heartbeat rewrites
the lock only while it still holds this owner's token, so a lease taken over is never clobbered.
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


def _acquire_s3(fs: Any, path: str, owner: Mapping[str, Any], uri: str, stale_after_s: float) -> None:
    """Write the lock and read it back after a pause: the last writer wins (see the module docstring)."""
    if exists(fs, path):
        held = _holder(fs, path)
        if held and not _is_stale(held, time.time(), stale_after_s):
            raise _locked_error(held, uri, stale_after_s)
    write_atomic(fs, path, json.dumps({**owner, "heartbeat": time.time()}).encode())
    time.sleep(0.5)  # let a racing writer's PUT land before reading back
    if _holder(fs, path).get("token") != owner["token"]:
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
    if is_local(fs):
        _acquire_local(path, owner, uri, stale_after_s)
    else:
        _acquire_s3(fs, path, owner, uri, stale_after_s)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            # a missed heartbeat only shortens the lease; the next one retries
            with contextlib.suppress(OSError):
                if _holder(fs, path).get("token") == token:  # taken over: never clobber the new owner
                    write_atomic(fs, path, json.dumps({**owner, "heartbeat": time.time()}).encode())

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
