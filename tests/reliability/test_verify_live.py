"""`audit verify` on a run being trained: the live lock is recognised, only what is finished is
checked, the unfinished outputs are reported as in progress, and the exit code is 0 when every
finished dataset is sound (a nightly verify never pages anyone over a training in progress). The
same state without a live lock is an interrupted run: its debris are faults (exit 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ops.conftest import run_cli

from tpgrpo.storage import RunLayout

from .test_concurrency import _hold

pytestmark = pytest.mark.integration


@pytest.fixture
def mid_update(reference_run: RunLayout, tmp_path: Path) -> RunLayout:
    """A copy of the reference run as it is while iteration 1's update writes: its `updates`
    dataset and checkpoint 2 unfinished (files, no manifest)."""
    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    layout = RunLayout(str(root), reference_run.run_id)
    (Path(layout.updates(1)) / "_MANIFEST.json").unlink()
    (Path(layout.checkpoint(2)) / "_CHECKPOINT.json").unlink()
    return layout


def _verify(layout: RunLayout, *extra: str) -> object:
    return run_cli("audit", "verify", "--run", layout.run_id, "--root", layout.root, *extra)


def test_verify_of_a_run_being_trained(mid_update: RunLayout) -> None:
    holder = _hold(mid_update.lock())
    try:
        result = _verify(mid_update, "-v")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    out = result.stdout  # type: ignore[attr-defined]
    assert "FAULT" not in out
    assert f"run {mid_update.run_id} is in progress (locked by pid {holder.pid}" in out
    assert "2 unfinished output(s) not checked" in out
    assert "busy   iter=0001/updates (being written)" in out
    assert "ok     iter=0001/rollouts" in out  # what is finished is still verified in full
    assert f"run {mid_update.run_id}: OK so far" in out


def test_a_fault_in_a_finished_dataset_is_still_found_while_training(mid_update: RunLayout) -> None:
    part = sorted(Path(mid_update.branches(0)).glob("part-*.parquet"))[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x5A
    part.write_bytes(bytes(data))
    holder = _hold(mid_update.lock())
    try:
        result = _verify(mid_update)
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert "FAULT  iter=0000/branches" in result.stdout  # type: ignore[attr-defined]


def test_the_same_state_without_a_live_lock_is_an_interrupted_run(mid_update: RunLayout) -> None:
    result = _verify(mid_update)
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert "FAULT  iter=0001/updates: unfinished" in result.stdout  # type: ignore[attr-defined]
    assert "in progress" not in result.stdout  # type: ignore[attr-defined]
