"""Two drivers on one run: the second refuses (a lease with a stale-lock rule), never interleaves.

The run lock (`<run>/run.lock`, see `tpgrpo.storage.lock`) is held by `tpgrpo train`, `tpgrpo
stage` and the rescore/annotate commands. Checked here: a live holder (another process, another
host) refuses a second driver with exit code 2 and no write; a dead holder (its pid gone, or its
heartbeat older than the stale limit) is taken over; of many processes starting at the same
moment exactly one wins, however the scheduler interleaves them; a heartbeat never overwrites
a lease another process took over.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ops.conftest import assert_user_error, run_cli

from tpgrpo.errors import RunLockedError
from tpgrpo.storage import RunLayout
from tpgrpo.storage import lock as lock_module
from tpgrpo.storage.lock import lease_holder, run_lock

from .chaos import train_command
from .conftest import PrefectServer, tree, write_config

HOLD = textwrap.dedent(
    """
    import sys, time
    from tpgrpo.storage.lock import run_lock
    with run_lock(sys.argv[1], heartbeat_s=0.5):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold(lock: str, seconds: float = 120) -> subprocess.Popen[str]:
    """Another process holding `lock` (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, lock, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _write_lock(path: Path, **owner: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "t0", **owner}))


def test_train_refuses_a_run_another_process_holds(flow_pipeline: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    config = write_config(flow_pipeline, root, tmp_path / "c.yaml")
    layout = RunLayout(str(root), "busy")
    holder = _hold(layout.lock())
    try:
        before = {p: p.read_bytes() for p in Path(layout.run_dir).rglob("*") if p.is_file()}
        assert_user_error(run_cli("train", str(config), "--run-id", "busy"), f"locked by pid {holder.pid}")
        after = {p: p.read_bytes() for p in Path(layout.run_dir).rglob("*") if p.is_file()}
        assert before.keys() == after.keys() == {Path(layout.lock())}
        assert json.loads(after[Path(layout.lock())])["pid"] == holder.pid
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


@pytest.mark.integration
def test_second_train_process_refuses_while_the_first_runs(
    flow_pipeline: Path, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    """A real `tpgrpo train` holds the run; a second `tpgrpo train` of the same run id is refused
    (exit code 2, naming the first's pid) without writing; once the first is killed -9, its lease
    is stale and the next process takes it over (the kill -9 tests resume that way every time)."""
    root = tmp_path / "runs"
    config = write_config(flow_pipeline, root, tmp_path / "c.yaml")
    layout = RunLayout(str(root), "twice")
    first = subprocess.Popen(
        train_command(config, "twice"),
        env=prefect_server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while lease_holder(layout.lock()) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None and lease_holder(layout.lock()) is not None
        assert_user_error(run_cli("train", str(config), "--run-id", "twice"), f"locked by pid {first.pid}")
        held = json.loads(Path(layout.lock()).read_text())
        assert held["pid"] == first.pid
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert lease_holder(layout.lock()) is None  # its pid is gone: stale at once
    with run_lock(layout.lock()) as owner:
        assert json.loads(Path(layout.lock()).read_text())["token"] == owner["token"]


def test_stage_refuses_a_run_another_process_holds(reference_run: RunLayout, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    layout = RunLayout(str(root), reference_run.run_id)
    holder = _hold(layout.lock())
    try:
        result = run_cli(
            "stage", "score", "--run", layout.run_id, "--iter", "0", "--force", "--root", str(root)
        )
        assert_user_error(result, f"locked by pid {holder.pid}")
        assert run_cli("audit", "verify", "--run", layout.run_id, "--root", str(root)).exit_code == 0
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_stale_lock_rules(tmp_path: Path) -> None:
    lock = tmp_path / "run" / "run.lock"
    now = time.time()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    cases = [
        ({"pid": int(dead.stdout), "heartbeat": now, "since": now}, True),  # dead pid on this host
        ({"host": "elsewhere", "pid": 1, "heartbeat": now - 5, "since": now}, False),  # fresh, other host
        ({"host": "elsewhere", "pid": 1, "heartbeat": now - 500, "since": now}, True),  # heartbeat too old
        ({"pid": os.getpid(), "heartbeat": now, "since": now}, False),  # this live process
    ]
    for owner, stale in cases:
        _write_lock(lock, **owner)
        if stale:
            with run_lock(str(lock), stale_after_s=90) as mine:
                assert json.loads(lock.read_text())["token"] == mine["token"]
            assert not lock.exists()
        else:
            refused = pytest.raises(RunLockedError, match=f"locked by pid {owner['pid']} on")
            with refused, run_lock(str(lock), stale_after_s=90):
                pass
            assert json.loads(lock.read_text())["token"] == "t0"  # untouched


def test_half_written_lock(tmp_path: Path) -> None:
    """An empty lock file is a lock being written this instant: refused while young, taken when old."""
    lock = tmp_path / "run.lock"
    lock.write_bytes(b"")
    with (
        pytest.raises(RunLockedError, match="being taken by another process"),
        run_lock(str(lock), stale_after_s=60),
    ):
        pass
    old = time.time() - 120
    os.utime(lock, (old, old))
    with run_lock(str(lock), stale_after_s=60):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("contenders", [8])
def test_one_winner_however_the_scheduler_interleaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contenders: int
) -> None:
    """Contenders start together; a random pause after each one's look at the lock (as a loaded
    machine makes) must not let two of them hold it at once."""
    import random

    lock = str(tmp_path / "run.lock")
    real_holder = lock_module._holder

    def slow_holder(fs: Any, path: str) -> dict[str, Any]:
        held = real_holder(fs, path)
        time.sleep(random.uniform(0, 0.05))
        return held

    monkeypatch.setattr(lock_module, "_holder", slow_holder)
    barrier = threading.Barrier(contenders)
    holding: list[int] = []
    overlaps: list[int] = []
    wins: list[int] = []
    guard = threading.Lock()

    def contend(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            try:
                with run_lock(lock, stale_after_s=60):
                    with guard:
                        holding.append(i)
                        overlaps.append(len(holding))
                        wins.append(i)
                    time.sleep(0.05)
                    with guard:
                        holding.remove(i)
            except RunLockedError:
                time.sleep(random.uniform(0, 0.02))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins and max(overlaps) == 1, overlaps


@pytest.mark.slow
def test_processes_racing_for_the_lock(tmp_path: Path) -> None:
    """Six processes ask for the lock at the same wall-clock instant: one wins, the others are
    refused, and no two ever hold it at the same time."""
    lock = str(tmp_path / "run" / "run.lock")
    start = time.time() + 10.0  # every process has imported by then, even on a loaded machine
    script = textwrap.dedent(
        """
        import sys, time
        from tpgrpo.errors import RunLockedError
        from tpgrpo.storage.lock import run_lock
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
        try:
            with run_lock(sys.argv[1]):
                held = time.time()
                time.sleep(3.0)
                print("won", held, time.time(), flush=True)
        except RunLockedError:
            print("refused", flush=True)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, lock, str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    answers = [p.communicate(timeout=120)[0].split() for p in procs]
    held = sorted((float(a[1]), float(a[2])) for a in answers if a[0] == "won")
    assert held and sum(a[0] == "refused" for a in answers) >= 1, answers
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(held)), held


def test_heartbeat_never_clobbers_a_lease_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with run_lock(str(lock), heartbeat_s=0.05) as mine:
        time.sleep(0.2)
        assert json.loads(lock.read_text())["token"] == mine["token"]  # beating
        _write_lock(lock, token="new-owner", heartbeat=time.time(), since=time.time())
        time.sleep(0.3)
        assert json.loads(lock.read_text())["token"] == "new-owner"
    assert json.loads(lock.read_text())["token"] == "new-owner"  # nor removed on exit


@pytest.mark.s3
def test_s3_lock_refuses_a_second_holder(s3_bucket: Any) -> None:
    uri = f"{s3_bucket.root}/r/run.lock"
    options = s3_bucket.storage_options
    with run_lock(uri, options):
        with pytest.raises(RunLockedError, match="locked by pid"), run_lock(uri, options):
            pass
        assert lease_holder(uri, options) is not None
    assert lease_holder(uri, options) is None


def test_refusal_writes_nothing_for_a_new_run(flow_pipeline: Path, tmp_path: Path) -> None:
    """A refused second driver of a brand-new run leaves only the holder's lock."""
    root = tmp_path / "runs"
    config = write_config(flow_pipeline, root, tmp_path / "c.yaml")
    holder = _hold(str(root / "fresh" / "run.lock"))
    try:
        assert_user_error(run_cli("train", str(config), "--run-id", "fresh"), "locked by pid")
        assert tree(root) == ["fresh", "fresh/run.lock"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
