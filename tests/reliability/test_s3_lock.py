"""The run lock on S3: a conditional create (If-None-Match) and conditional takeover (If-Match),
raced by real processes against the S3-protocol (moto) server.

Processes start at one wall-clock instant (each has imported by then) and ask for the lease; the
ones refused say so. Exactly one must win a fresh lock, exactly one must take over a stale one,
and no heartbeat may overwrite a lease another process took over.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from tpgrpo.errors import RunLockedError
from tpgrpo.storage import lock as lock_module
from tpgrpo.storage.lock import lease_holder, run_lock

pytestmark = pytest.mark.s3

RACE = textwrap.dedent(
    """
    import json, sys, time
    from tpgrpo.errors import RunLockedError
    from tpgrpo.storage.lock import run_lock
    uri, options, start = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    time.sleep(max(0.0, start - time.time()))
    try:
        with run_lock(uri, options, heartbeat_s=0.5):
            held = time.time()
            time.sleep(2.0)
            print("won", held, time.time(), flush=True)
    except RunLockedError as err:
        print("refused", str(err).split(";")[0].replace(" ", "_"), flush=True)
    """
)


def _race(uri: str, options: dict[str, Any] | list[dict[str, Any]], contenders: int) -> list[list[str]]:
    """`contenders` processes asking for the lease at once (each with its own options, if a list)."""
    start = time.time() + 15.0  # every process has imported by then, even on a loaded machine
    each = options if isinstance(options, list) else [options] * contenders
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, uri, json.dumps(opts), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for opts in each
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    answers = [out.split() for out, _ in outputs]
    assert all(a and a[0] in ("won", "refused") for a in answers), [err[-2000:] for _, err in outputs]
    return answers


def _winners(answers: list[list[str]]) -> list[tuple[float, float]]:
    return sorted((float(a[1]), float(a[2])) for a in answers if a[0] == "won")


def test_racing_creators_one_winner(s3_bucket: Any) -> None:
    uri = f"{s3_bucket.root}/r/run.lock"
    answers = _race(uri, s3_bucket.storage_options, 6)
    won = _winners(answers)
    assert len(won) == 1, answers  # the others were refused while it held the lease
    assert all("locked_by_pid" in a[1] or "same_moment" in a[1] for a in answers if a[0] == "refused")
    assert lease_holder(uri, s3_bucket.storage_options) is None  # released on exit


def test_a_slow_put_cannot_steal_the_lease(s3_bucket: Any, s3_endpoint: str, proxy: Any) -> None:
    """Both processes find no lock; B's PUT then crawls through a slow link (1.5 s, longer than any
    pause a write-then-read-back lock can afford) and lands after A holds the lease. Write–pause–
    read-back let B overwrite A's lease and both believe they won; the conditional create refuses B."""
    from .faults import Fault, FaultProxy

    uri = f"{s3_bucket.root}/r/run.lock"
    proxy.add(Fault("delay", method="PUT", path="run.lock", seconds=1.5))  # B's link
    other = FaultProxy(s3_endpoint)  # A's link: its first look at the lock waits until B has looked
    other.add(Fault("delay", path="run.lock", times=1, seconds=0.3))
    try:
        a = {**s3_bucket.storage_options, "endpoint_url": other.url}
        b = {**s3_bucket.storage_options, "endpoint_url": proxy.url}
        answers = _race(uri, [a, b], 2)
    finally:
        other.close()
    assert len(_winners(answers)) == 1, answers


def test_racing_takeovers_of_a_stale_lock_one_winner(s3_bucket: Any) -> None:
    import s3fs

    uri = f"{s3_bucket.root}/r/run.lock"
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    stale = {"host": "gone-host", "pid": 1, "token": "dead", "since": 0.0, "heartbeat": time.time() - 3600}
    fs.pipe_file(uri.removeprefix("s3://"), json.dumps(stale).encode())
    answers = _race(uri, s3_bucket.storage_options, 6)
    assert len(_winners(answers)) == 1, answers


def test_heartbeat_never_clobbers_a_lease_taken_over_on_s3(s3_bucket: Any) -> None:
    import s3fs

    uri = f"{s3_bucket.root}/r/run.lock"
    options = s3_bucket.storage_options
    fs = s3fs.S3FileSystem(**options)
    path = uri.removeprefix("s3://")
    with run_lock(uri, options, heartbeat_s=0.05) as mine:
        time.sleep(0.5)
        assert json.loads(fs.cat_file(path))["token"] == mine["token"]
        beat = json.loads(fs.cat_file(path))["heartbeat"]
        time.sleep(0.5)
        assert json.loads(fs.cat_file(path))["heartbeat"] > beat  # beating (conditionally on its ETag)
        other = {"host": "h", "pid": 2, "token": "new-owner", "since": time.time(), "heartbeat": time.time()}
        fs.pipe_file(path, json.dumps(other).encode())
        time.sleep(0.5)
        assert json.loads(fs.cat_file(path))["token"] == "new-owner"
    assert json.loads(fs.cat_file(path))["token"] == "new-owner"  # nor removed on exit


def test_store_ignoring_conditional_writes_falls_back(
    s3_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3-compatible store that ignores If-None-Match / If-Match is detected; the lease then
    works by writing, pausing and reading back (the last writer wins), and still refuses a second
    holder."""
    real_put = lock_module._put
    seen: list[bool] = []

    def ignoring_put(fs: Any, path: str, data: bytes, **condition: str) -> str | None:
        return real_put(fs, path, data)  # conditions dropped, as such a store does

    real_acquire = lock_module._acquire_s3

    def acquire(*args: Any) -> dict[str, Any]:
        lease = real_acquire(*args)
        seen.append(lease["conditional"])
        return lease

    monkeypatch.setattr(lock_module, "_put", ignoring_put)
    monkeypatch.setattr(lock_module, "_acquire_s3", acquire)
    uri = f"{s3_bucket.root}/r/run.lock"
    options = s3_bucket.storage_options
    with run_lock(uri, options):
        assert seen == [False]
        with pytest.raises(RunLockedError, match="locked by pid"), run_lock(uri, options):
            pass
    assert lease_holder(uri, options) is None
