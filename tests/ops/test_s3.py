"""The read-only commands on a run stored in S3 (moto's S3 server): same output as on local disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import StoredRun, run_cli

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_run(stored_run: StoredRun, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch) -> StoredRun:
    import s3fs

    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    fs.put(str(stored_run.dir), f"{s3_bucket.bucket}/runs/{stored_run.run_id}", recursive=True)
    return StoredRun(s3_bucket.root, stored_run.run_id, stored_run.reward_key)


def test_inspect_audit_and_report_a_run_on_s3(
    s3_run: StoredRun, stored_run: StoredRun, tmp_path: Path
) -> None:
    root = str(s3_run.root)
    listing = run_cli("runs", "list", "--root", root)
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.splitlines()[1].split()[:3] == [s3_run.run_id, "complete", "2/2"]
    local = run_cli("runs", "show", stored_run.run_id, "--root", str(stored_run.root)).stdout
    remote = run_cli("runs", "show", s3_run.run_id, "--root", root).stdout
    assert remote.splitlines()[2:] == local.splitlines()[2:]  # all but the location line
    verify = run_cli("audit", "verify", "--run", s3_run.run_id, "--root", root)
    assert verify.exit_code == 0, verify.output
    traj = run_cli(
        "audit", "trajectory", "--run", s3_run.run_id, "--root", root, "--iter", "1", "--traj", "2"
    )
    assert traj.exit_code == 0, traj.output
    same = run_cli("audit", "trajectory", *stored_run.args("--iter", "1", "--traj", "2"))
    assert traj.stdout.splitlines()[1:] == same.stdout.splitlines()[1:]
    report = run_cli("report", "--run", s3_run.run_id, "--root", root, "--out", str(tmp_path / "r"))
    assert report.exit_code == 0, report.output
    assert (tmp_path / "r" / "index.html").is_file()
