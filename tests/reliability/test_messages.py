"""What a user sees when something is wrong: one `error: …` line naming the problem and the fix.

- S3 without credentials, with an unreachable endpoint or a missing bucket: one line naming the
  runs root and what is missing, before any work (`train`, `runs list`, the commands on a run);
- a user mistake or a data fault inside a Prefect flow: only that line on stderr, none of Prefect's
  tracebacks or failure states (they stay in the Prefect logs; `tpgrpo --verbose` prints them);
- failures a rerun cannot fix (a missing `--png` folder, `report --out` onto a file, a root that is
  a file) are refused up front with exit code 2, never with "run the same command again".

The commands run as real processes: their whole stderr is what an operator sees.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ops.conftest import assert_user_error, run_cli

from tpgrpo.storage import RunLayout

from .conftest import PrefectServer, tree, write_config

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpgrpo.cli.app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """`proc` failed with `code`, printing no traceback and exactly one `error:` line (the last)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0] or "Stopping temporary server" in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _aws_env(**extra: str) -> dict[str, str]:
    """The environment without any AWS credential source, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials",
        AWS_CONFIG_FILE="/nonexistent/config",
        AWS_EC2_METADATA_DISABLED="true",
        PREFECT_HOME=env.get("PREFECT_HOME", "/tmp/tpgrpo-test-prefect"),
    )
    env.update(extra)
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- S3 access ------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_without_credentials(s3_bucket: Any, flow_pipeline: Path, tmp_path: Path) -> None:
    env = _aws_env(AWS_ENDPOINT_URL=s3_bucket.endpoint_url)
    config = write_config(flow_pipeline, s3_bucket.root, tmp_path / "s3.yaml")
    for args in (
        ["runs", "list", "--root", s3_bucket.root],
        ["runs", "show", "x", "--root", s3_bucket.root],
        ["audit", "verify", "--run", "x", "--root", s3_bucket.root],
        ["train", str(config), "--run-id", "x"],
    ):
        _one_error_line(
            _cli(*args, env=env),
            2,
            f"no S3 credentials found for runs root {s3_bucket.root}",
            "AWS_ACCESS_KEY_ID",
            "storage.s3.key",
        )


@pytest.mark.s3
def test_s3_endpoint_unreachable(s3_bucket: Any) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = _aws_env(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    for args in (["runs", "list", "--root", s3_bucket.root], ["runs", "show", "x", "--root", s3_bucket.root]):
        _one_error_line(
            _cli(*args, env=env),
            2,
            f"cannot reach the S3 endpoint {endpoint}",
            s3_bucket.root,
            "AWS_ENDPOINT_URL",
        )


@pytest.mark.s3
def test_s3_bucket_missing(s3_endpoint: str) -> None:
    env = _aws_env(AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = _cli("runs", "list", "--root", "s3://no-such-bucket-x1/runs", env=env)
    _one_error_line(proc, 2, "S3 bucket 'no-such-bucket-x1'", "does not exist", "create it")


# --- failures inside a flow -------------------------------------------------------------------------


@pytest.fixture
def copy_root(reference_run: RunLayout, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    return root


def _corrupt_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _rescore(root: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    spec = json.dumps({"name": "jpeg", "quality": 40, "key": "jpeg_q40"})
    return _cli(*extra, "rescore", "--run", "ref", "--root", str(root), "--reward", spec, env=env)


def test_data_fault_inside_a_flow_prints_only_the_message(
    copy_root: Path, prefect_server: PrefectServer
) -> None:
    part = sorted((copy_root / "ref" / "iter=0001" / "branches").glob("part-*.parquet"))[0]
    _corrupt_same_size(part)
    proc = _rescore(copy_root, prefect_server.env)
    _one_error_line(proc, 1, "iter=0001/branches", "corrupted", "--force")
    assert "Finished in state Failed" not in proc.stderr and "encountered an exception" not in proc.stderr
    assert "score it0" in proc.stderr  # Prefect's progress lines are still there
    verbose = _rescore(copy_root, prefect_server.env, "--verbose")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and "DataError" in verbose.stderr


def test_stale_dataset_inside_the_train_flow_prints_only_the_message(
    copy_root: Path,
    flow_pipeline: Path,
    reference_run: RunLayout,
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    manifest = copy_root / "ref" / "iter=0001" / "rollouts" / "_MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["inputs"]["checkpoint"] = "f" * 64  # built from another checkpoint 1, as after a rebuild
    manifest.write_text(json.dumps(data))
    config = write_config(flow_pipeline, reference_run.root, tmp_path / "train.yaml")
    proc = _cli("train", str(config), "--run-id", "ref", "--root", str(copy_root), env=prefect_server.env)
    _one_error_line(proc, 1, "iter=0001/rollouts", "other inputs", "tpgrpo runs invalidate ref --from 1")
    assert "Finished in state Failed" not in proc.stderr


def test_user_mistake_found_before_the_flow_starts(copy_root: Path, prefect_server: PrefectServer) -> None:
    spec = json.dumps({"name": "jpeg", "key": "Bad Key"})
    proc = _cli("rescore", "--run", "ref", "--root", str(copy_root), "--reward", spec, env=prefect_server.env)
    _one_error_line(proc, 2, "invalid reward key or mode 'Bad Key'")
    assert "Beginning flow run" not in proc.stderr


# --- failures a rerun cannot fix ----------------------------------------------------------------------


def test_root_that_is_a_file(tmp_path: Path, flow_pipeline: Path) -> None:
    root = tmp_path / "runs"
    root.write_text("not a folder")
    for args in (["runs", "list"], ["runs", "show", "x"], ["audit", "verify", "--run", "x"]):
        assert_user_error(run_cli(*args, "--root", str(root)), f"runs root {root} is a file")
    config = write_config(flow_pipeline, root, tmp_path / "c.yaml")
    result = run_cli("train", str(config), "--run-id", "x")
    assert_user_error(result, "is a file")
    assert "run the same command again" not in result.output


def test_png_and_report_targets_are_checked_first(copy_root: Path, tmp_path: Path) -> None:
    run = ["--run", "ref", "--root", str(copy_root)]
    trajectory = ["audit", "trajectory", *run, "--iter", "0", "--traj", "0"]
    missing = tmp_path / "no-folder" / "t.png"
    (tmp_path / "folder.png").mkdir()
    for png, fragment in [
        (str(missing), "does not exist"),
        (str(tmp_path / "t.jpg"), "must end in .png"),
        (str(tmp_path / "folder.png"), "is a folder"),
        ("", "--png is empty"),
    ]:
        result = run_cli(*trajectory, "--png", png)
        assert_user_error(result, "--png", fragment)
        assert "run the same command again" not in result.output
    a_file = tmp_path / "report.html"
    a_file.write_text("x")
    for out, fragment in [(str(a_file), "is a file"), (str(a_file / "sub"), "which is a file")]:
        result = run_cli("report", *run, "--out", out)
        assert_user_error(result, "--out", fragment)
    assert not missing.parent.exists()


def test_os_errors_advise_a_rerun_only_when_it_helps() -> None:
    from tpgrpo.cli.app import describe_os_error
    from tpgrpo.storage.files import StorageIOError

    full, code = describe_os_error(OSError(errno.ENOSPC, "No space left on device"))
    assert code == 1 and "free some space" in full and "run the same command again" in full
    flaky, code = describe_os_error(StorageIOError(errno.EIO, "writing dataset s3://b/x failed: 503"))
    assert code == 1 and "run the same command again" in flaky
    for err in (
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"),
        NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "/x"),
        FileExistsError(errno.EEXIST, "File exists", "/x"),
        PermissionError(errno.EACCES, "Permission denied", "/x"),
    ):
        message, code = describe_os_error(err)
        assert code == 2 and "run the same command again" not in message, message


def test_runs_list_of_a_file_root_exits_non_zero(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    result = run_cli("runs", "list", "--root", str(root))
    assert result.exit_code == 2
    assert tree(tmp_path) == ["file"]
