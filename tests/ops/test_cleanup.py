"""`tpgrpo runs rm` and `tpgrpo runs gc` on a real stored run, on local disk and on S3 (moto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import StoredRun, assert_user_error, file_digests, run_cli

TEMP = ".run.json.0123456789abcdef0123456789abcdef.tmp"


def make_debris(run: Path) -> list[str]:
    """An unfinished dataset, an unfinished checkpoint and a temp file; returns their paths."""
    (run / "iter=0001/updates/_MANIFEST.json").unlink()  # the update's parts are there, no manifest
    (run / "checkpoints/iter=0002/_CHECKPOINT.json").unlink()
    (run / TEMP).write_bytes(b"half a run.json")
    return ["iter=0001/updates", "checkpoints/iter=0002", TEMP]


def test_gc_lists_then_removes_only_the_debris(run_copy: StoredRun) -> None:
    run = run_copy.dir
    debris = make_debris(run)
    before = file_digests(run)
    dry = run_cli("runs", "gc", "--dry-run", "--root", str(run_copy.root))
    assert dry.exit_code == 0, dry.output
    for rel, kind in zip(debris, ("unfinished dataset", "unfinished checkpoint", "temp file"), strict=True):
        assert f"would remove {run_copy.run_id}/{rel} ({kind}," in dry.stdout
    assert "gc: would remove 3 item(s)" in dry.stdout
    assert file_digests(run) == before  # a dry run touches nothing

    result = run_cli("runs", "gc", "--run", run_copy.run_id, "--root", str(run_copy.root))
    assert result.exit_code == 0, result.output
    assert "gc: removed 3 item(s)" in result.stdout and "from 1 run(s)" in result.stdout
    kept = {p: d for p, d in before.items() if not any(p == rel or p.startswith(rel + "/") for rel in debris)}
    assert file_digests(run) == kept  # everything else byte for byte
    assert not any((run / rel).exists() for rel in debris)
    again = run_cli("runs", "gc", "--root", str(run_copy.root))
    assert "gc: removed 0 item(s)" in again.stdout


def test_gc_skips_a_run_in_use_and_rejects_an_unknown_run(run_copy: StoredRun) -> None:
    from tpgrpo.storage.lock import run_lock

    run = run_copy.dir
    make_debris(run)
    before = file_digests(run, skip=("run.lock",))
    with run_lock(run_copy.layout.lock()):  # a live train of this run
        result = run_cli("runs", "gc", "--root", str(run_copy.root))
    assert result.exit_code == 0, result.output
    assert f"skipped (being trained or rescored): {run_copy.run_id}" in result.stdout
    assert file_digests(run, skip=("run.lock",)) == before
    assert_user_error(
        run_cli("runs", "gc", "--run", "nope", "--root", str(run_copy.root)), "unknown run 'nope'"
    )


def test_rm_needs_yes_refuses_a_live_run_and_removes(run_copy: StoredRun) -> None:
    from tpgrpo.storage.lock import run_lock

    root, run_id = str(run_copy.root), run_copy.run_id
    before = file_digests(run_copy.dir)
    # no terminal to confirm on (CliRunner's stdin): --yes is required, nothing is removed
    assert_user_error(run_cli("runs", "rm", run_id, "--root", root), f"would remove run {run_id}", "--yes")
    with run_lock(run_copy.layout.lock()):
        assert_user_error(run_cli("runs", "rm", run_id, "--yes", "--root", root), "is in use", "pid")
    assert file_digests(run_copy.dir) == before
    assert_user_error(run_cli("runs", "rm", "nope", "--yes", "--root", root), "unknown run 'nope'", run_id)

    result = run_cli("runs", "rm", run_id, "--yes", "--root", root)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"removed run {run_id} (")
    assert not run_copy.dir.exists()
    assert run_cli("runs", "list", "--root", root).stdout.startswith("no runs under")


def test_rm_finishes_an_interrupted_rm(run_copy: StoredRun) -> None:
    """`remove_run` deletes run.json first: what a crash leaves is no longer a run, and rm finishes it."""
    (run_copy.dir / "run.json").unlink()
    result = run_cli("runs", "rm", run_copy.run_id, "--yes", "--root", str(run_copy.root))
    assert result.exit_code == 0, result.output
    assert f"removed the remains of run {run_copy.run_id}" in result.stdout
    assert not run_copy.dir.exists()


@pytest.mark.s3
def test_gc_and_rm_on_s3(stored_run: StoredRun, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    prefix = f"{s3_bucket.bucket}/runs/{stored_run.run_id}"
    fs.put(str(stored_run.dir), prefix, recursive=True)
    fs.rm(f"{prefix}/iter=0001/updates/_MANIFEST.json")
    root = s3_bucket.root
    result = run_cli("runs", "gc", "--root", root)
    assert result.exit_code == 0, result.output
    assert f"removed {stored_run.run_id}/iter=0001/updates (unfinished dataset," in result.stdout
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/iter=0001/updates") and fs.exists(
        f"{prefix}/iter=0001/rollouts/_MANIFEST.json"
    )

    result = run_cli("runs", "rm", stored_run.run_id, "--yes", "--root", root)
    assert result.exit_code == 0, result.output
    fs.invalidate_cache()
    assert fs.find(prefix) == []
    assert run_cli("runs", "list", "--root", root).stdout.startswith("no runs under")
