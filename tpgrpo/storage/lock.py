"""A lease on a run: one driving process at a time, with a stale-lock rule.

The lock file `<run>/run.lock` holds the owner (host, pid, a random token) and a heartbeat time
the owner refreshes every `heartbeat_s`. Another process refuses to start while the lease is
fresh; a lease whose heartbeat is older than `stale_after_s` (its owner died, e.g. `kill -9`, or
its machine went away) is taken over. On the same host a lease whose pid no longer exists is stale
at once. Acquisition writes the lock and reads it back: only the writer whose token is there won.
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

from tpgrpo.errors import RunLockedError
from tpgrpo.storage.files import exists, is_local, read_bytes, remove_file, write_atomic
from tpgrpo.storage.uri import filesystem_for

HEARTBEAT_S = 15.0
STALE_AFTER_S = 90.0


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
    if exists(fs, path):
        try:
            held = json.loads(read_bytes(fs, path))
        except (json.JSONDecodeError, FileNotFoundError):
            held = {}
        if held and not _is_stale(held, time.time(), stale_after_s):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("since", 0))))
            raise RunLockedError(
                f"run is locked by pid {held.get('pid')} on {held.get('host')} since {since} ({uri}); "
                f"wait for it to finish, or remove the lock file if that process is gone "
                f"(it is taken over automatically {int(stale_after_s)} s after its last heartbeat)"
            )
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(fs, path, json.dumps({**owner, "heartbeat": time.time()}).encode())
    time.sleep(0.05)  # let a racing writer's PUT land before reading back
    if json.loads(read_bytes(fs, path)).get("token") != token:
        raise RunLockedError(f"another process took the run's lock at the same moment ({uri}); try again")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            # a missed heartbeat only shortens the lease; the next one retries
            with contextlib.suppress(OSError):
                write_atomic(fs, path, json.dumps({**owner, "heartbeat": time.time()}).encode())

    thread = threading.Thread(target=beat, name="tpgrpo-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            if json.loads(read_bytes(fs, path)).get("token") == token:
                remove_file(fs, path)
        except (FileNotFoundError, json.JSONDecodeError):
            pass


def lease_holder(
    uri: str, storage_options: Mapping[str, Any] | None = None, *, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any] | None:
    """The owner of a live lease on `uri` (host, pid, since, heartbeat), or `None` when free or stale.

    For status displays; acquiring goes through `run_lock`.
    """
    fs, path = filesystem_for(uri, storage_options)
    if not exists(fs, path):
        return None
    try:
        held = json.loads(read_bytes(fs, path))
    except (json.JSONDecodeError, FileNotFoundError):
        return None
    if not isinstance(held, dict) or _is_stale(held, time.time(), stale_after_s):
        return None
    return held
