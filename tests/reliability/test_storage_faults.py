"""S3 faults between s3fs and the moto server: retried when transient, a clear failure when not,
and never a half-written dataset that looks finished.

Every request goes through `FaultProxy` on 127.0.0.1, so the real client stack meets the faults:
aiobotocore's retries (HTTP 5xx, dropped connections, timeouts), s3fs's own, and the Prefect
tasks' `retry_on_io` on top. Checked with the default client settings unless a test says otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from storage.samples import sample

from tpgrpo.errors import DataError
from tpgrpo.storage import (
    DatasetWriter,
    dataset_state,
    finalize_dataset,
    prepare_output,
    read_table,
    verify_dataset,
    write_dataset,
)
from tpgrpo.storage.blobs import blob_state, read_blobs, write_blobs
from tpgrpo.storage.files import StorageIOError

from .conftest import PrefectServer, use_server
from .faults import Fault, FaultProxy

pytestmark = pytest.mark.s3

ROWS = 12
# persistent-fault tests give up sooner than the default client (5 attempts, backoff up to 8 s):
# botocore's standard retry mode with 3 attempts; the slow tier also runs them with the defaults
FEW_RETRIES = {"retries": {"mode": "standard", "max_attempts": 3}}


@pytest.fixture
def direct(s3_bucket: Any) -> dict[str, Any]:
    """Storage options that bypass the proxy (to inspect what really landed)."""
    return dict(s3_bucket.storage_options)


@pytest.fixture
def faulty(s3_bucket: Any, proxy: FaultProxy) -> dict[str, Any]:
    """Storage options through the proxy."""
    return {**s3_bucket.storage_options, "endpoint_url": proxy.url}


def _write(uri: str, options: dict[str, Any]) -> Any:
    return write_dataset(
        uri, "branches", sample("branches", ROWS), inputs={}, config_hash="c", storage_options=options
    )


def _state(uri: str, options: dict[str, Any]) -> str:
    return dataset_state(uri, inputs={}, config_hash="c", storage_options=options)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", method="PUT", times=2, status=503),
        Fault("status", method="PUT", times=2, status=500),
        Fault("drop", method="PUT", times=2),
        Fault("status_after", method="PUT", path="_MANIFEST", times=1, status=500),
        Fault("delay", method="PUT", times=2, seconds=1.0),
        Fault("status", method="GET", times=2, status=503),
        Fault("drop", every=3),
    ],
    ids=[
        "503 on PUT",
        "500 on PUT",
        "dropped PUT",
        "lost manifest answer",
        "slow PUT",
        "503 on GET",
        "drops",
    ],
)
def test_transient_faults_are_retried(
    s3_bucket: Any, proxy: FaultProxy, faulty: dict[str, Any], direct: dict[str, Any], fault: Fault
) -> None:
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    proxy.add(fault)
    started = time.monotonic()
    manifest = _write(uri, faulty)
    assert proxy.injected() >= 1
    if fault.action == "delay":
        assert time.monotonic() - started >= fault.seconds
    assert manifest.rows == ROWS
    assert _state(uri, direct) == "done"
    verify_dataset(uri, storage_options=direct)
    assert read_table(uri, "branches", storage_options=faulty).num_rows == ROWS  # reads through faults too


@pytest.mark.parametrize(
    "fault",
    [
        Fault("drop", method="GET", times=2),
        Fault("truncate", method="GET", times=2),
        Fault("status", method="GET", times=3, status=500),
        Fault("status", method="HEAD", times=2, status=503),
    ],
    ids=["dropped GET", "truncated GET", "500 on GET", "503 on HEAD"],
)
def test_transient_read_faults_are_retried(
    s3_bucket: Any, proxy: FaultProxy, faulty: dict[str, Any], direct: dict[str, Any], fault: Fault
) -> None:
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    _write(uri, direct)
    expected = read_table(uri, "branches", storage_options=direct)
    proxy.add(fault)
    assert read_table(uri, "branches", storage_options=faulty).equals(expected)
    assert proxy.injected() >= 1


@pytest.mark.parametrize(
    ("path", "what", "client"),
    [
        ("part-", "writing dataset", FEW_RETRIES),
        ("_MANIFEST", "finalizing dataset", FEW_RETRIES),
        pytest.param("_SHARD", "writing dataset", FEW_RETRIES, marks=pytest.mark.slow),
        pytest.param("part-", "writing dataset", {}, marks=pytest.mark.slow),
        pytest.param("_MANIFEST", "finalizing dataset", {}, marks=pytest.mark.slow),
    ],
    ids=["part files", "manifest", "shard record", "part files, default client", "manifest, default client"],
)
def test_persistent_write_fault_leaves_debris_never_a_finished_dataset(
    s3_bucket: Any,
    proxy: FaultProxy,
    faulty: dict[str, Any],
    direct: dict[str, Any],
    path: str,
    what: str,
    client: dict[str, Any],
) -> None:
    """Every PUT of one kind fails: after the client's retries the write fails with a message naming
    the dataset; what is left is debris (no manifest) that readers refuse and the next run clears."""
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    faulty = {**faulty, "config_kwargs": client} if client else faulty
    proxy.add(Fault("status", method="PUT", path=path, status=500))
    with pytest.raises(StorageIOError, match=f"{what} {uri} failed: "):
        _write(uri, faulty)
    assert proxy.injected() >= 2  # the client retried before giving up
    assert _state(uri, direct) in ("debris", "missing")
    with pytest.raises(DataError, match="not a finished dataset"):
        read_table(uri, "branches", storage_options=direct)
    # the storage recovers: the next run clears the debris and writes the dataset whole
    proxy.clear()
    assert (
        prepare_output(uri, inputs={}, config_hash="c", schema_name="branches", storage_options=faulty)
        == "write"
    )
    assert _write(uri, faulty).rows == ROWS
    verify_dataset(uri, storage_options=direct)


def test_finalize_retried_after_its_answer_was_lost(
    s3_bucket: Any, proxy: FaultProxy, faulty: dict[str, Any], direct: dict[str, Any]
) -> None:
    """The manifest PUT lands every time but its answer is lost: finalize fails after the client's
    retries; the task's retry then finds the dataset finished by itself and returns its manifest."""
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    with DatasetWriter(uri, "branches", storage_options=direct) as writer:
        writer.write(sample("branches", ROWS))
    proxy.add(Fault("status_after", method="PUT", path="_MANIFEST", status=500))
    options = {**faulty, "config_kwargs": FEW_RETRIES}
    with pytest.raises(StorageIOError, match="finalizing dataset"):
        finalize_dataset(uri, "branches", inputs={}, config_hash="c", shards=1, storage_options=options)
    proxy.clear()
    manifest = finalize_dataset(
        uri, "branches", inputs={}, config_hash="c", shards=1, storage_options=options
    )
    assert manifest.rows == ROWS and _state(uri, direct) == "done"
    verify_dataset(uri, storage_options=direct)
    with pytest.raises(DataError, match="finished dataset"):  # other inputs: still refused
        finalize_dataset(
            uri, "branches", inputs={"x": "y"}, config_hash="c", shards=1, storage_options=direct
        )


@pytest.mark.slow
def test_persistent_latency_times_out(s3_bucket: Any, proxy: FaultProxy, direct: dict[str, Any]) -> None:
    """Answers slower than the client's read timeout: retried, then a clear failure, no manifest."""
    options = {
        **direct,
        "endpoint_url": proxy.url,
        "config_kwargs": {"read_timeout": 1, "connect_timeout": 1, "retries": {"max_attempts": 2}},
    }
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    proxy.add(Fault("delay", method="PUT", path="part-", seconds=4.0))
    started = time.monotonic()
    with pytest.raises(StorageIOError, match=f"writing dataset {uri}"):
        _write(uri, options)
    assert time.monotonic() - started < 120
    assert proxy.injected() >= 2
    assert _state(uri, direct) in ("debris", "missing")


def test_a_shard_failing_mid_write_leaves_no_finished_dataset(
    s3_bucket: Any, proxy: FaultProxy, faulty: dict[str, Any], direct: dict[str, Any]
) -> None:
    """Shard 1 dies (persistent faults) while shard 0 finished: finalize refuses, nothing is finished."""
    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    with DatasetWriter(uri, "branches", shard=0, storage_options=direct) as writer:
        writer.write(sample("branches", 4))
    proxy.add(Fault("status", method="PUT", path="part-00001", status=500))
    faulty = {**faulty, "config_kwargs": FEW_RETRIES}
    with pytest.raises(StorageIOError), DatasetWriter(uri, "branches", shard=1, storage_options=faulty) as w:
        w.write(sample("branches", 4))
    with pytest.raises(DataError, match=r"expected shards 0 … 1 to have finished, found \[0\]"):
        finalize_dataset(uri, "branches", inputs={}, config_hash="c", shards=2, storage_options=direct)
    assert _state(uri, direct) == "debris"


def test_checkpoint_write_fault_leaves_debris(
    s3_bucket: Any, proxy: FaultProxy, faulty: dict[str, Any], direct: dict[str, Any]
) -> None:
    uri = f"s3://{s3_bucket.bucket}/runs/r/checkpoints/iter=0001"
    proxy.add(Fault("status", method="PUT", path="_CHECKPOINT", status=500))
    faulty = {**faulty, "config_kwargs": FEW_RETRIES}
    files = {"adapter.safetensors": b"x" * 100, "state.json": b"{}"}
    with pytest.raises(StorageIOError, match=f"writing checkpoint {uri}"):
        write_blobs(uri, files, inputs={}, config_hash="c", storage_options=faulty)
    assert blob_state(uri, direct) == "debris"
    with pytest.raises(DataError, match="not a finished checkpoint"):
        read_blobs(uri, direct)


def test_cli_reports_storage_failure_in_one_line(
    s3_bucket: Any, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.conftest import run_cli

    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    proxy.add(Fault("status", status=500))
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # no cached client of another test's environment
    try:
        result = run_cli("runs", "list", "--root", s3_bucket.root)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stderr.startswith("error: I/O failed: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_task_retries_io_failures_beyond_the_client_retries(
    s3_bucket: Any,
    proxy: FaultProxy,
    faulty: dict[str, Any],
    direct: dict[str, Any],
    prefect_server: PrefectServer,
    tmp_path: Path,
) -> None:
    """Five failed PUTs exhaust botocore's attempts (an OSError); the flow task's `retry_on_io` runs
    the shard again, which clears its leftovers and writes the dataset whole. A compute error
    (ValueError) is not retried."""
    from prefect import flow, task

    from tpgrpo.flows.train import _TASK

    uri = f"s3://{s3_bucket.bucket}/runs/r/iter=0000/branches"
    attempts: list[str] = []

    @task(name="write-shard", retries=2, **{**_TASK, "retry_delay_seconds": 0})  # type: ignore[call-overload]
    def write_shard(kind: str) -> int:
        attempts.append(kind)
        if kind == "compute":
            raise ValueError("a bug, not I/O")
        return int(_write(uri, faulty).rows)

    @flow(name="retry-on-io", persist_result=False)
    def run(kind: str) -> int:
        return int(write_shard(kind))

    proxy.add(Fault("status", method="PUT", path="part-", times=5, status=500))
    with use_server(prefect_server):
        assert run("io") == ROWS
        with pytest.raises(ValueError, match="a bug"):
            run("compute")
    assert attempts == ["io", "io", "compute"]
    assert proxy.injected() == 5
    verify_dataset(uri, storage_options=direct)
