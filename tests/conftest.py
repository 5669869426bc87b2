"""Shared fixtures.

S3: a session-wide moto S3 server on 127.0.0.1 (a real S3-protocol endpoint reached over HTTP by
s3fs, not an in-process mock), and a fresh bucket per test. Dataset tests take `storage_root`,
parametrized over a local directory and an S3 prefix (the S3 case carries the `s3` marker).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

S3_KEY = "testing"
S3_SECRET = "testing"


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server.

    Args:
        endpoint_url (`str`): `http://127.0.0.1:<port>`.
        bucket (`str`): the bucket's name.
        storage_options (`dict`): options for `tpgrpo.storage` / s3fs (no region: custom endpoint).
        env (`dict`): the same as standard AWS environment variables.
    """

    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any] = field(repr=False)
    env: dict[str, str] = field(repr=False)

    @property
    def root(self) -> str:
        """`s3://<bucket>/runs`."""
        return f"s3://{self.bucket}/runs"


@dataclass(frozen=True)
class StorageRoot:
    """Where a parametrized test stores its data: a local directory or an S3 prefix.

    Args:
        uri (`str`): local path or `s3://bucket/prefix`.
        storage_options (`dict`, *optional*): S3 options (`None` locally).
        kind (`str`): `"local"` or `"s3"`.
    """

    uri: str
    storage_options: dict[str, Any] | None
    kind: str


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (any free port), for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    """A new, empty bucket for one test."""
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:16]}"
    options = {"endpoint_url": s3_endpoint, "key": S3_KEY, "secret": S3_SECRET}
    s3fs.S3FileSystem(**options).mkdir(bucket)
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }
    return S3Bucket(s3_endpoint, bucket, options, env)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_root(request: pytest.FixtureRequest, tmp_path: Any) -> StorageRoot:
    """A runs root on local disk or on the moto S3 server."""
    if request.param == "local":
        return StorageRoot(str(tmp_path / "runs"), None, "local")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return StorageRoot(bucket.root, bucket.storage_options, "s3")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (soaks, 20 random kill points); or set TPGRPO_SLOW=1",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tier (marked `slow`) runs with `--slow` only: CI runs the fast tier."""
    import os

    if config.getoption("--slow") or os.environ.get("TPGRPO_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow (or TPGRPO_SLOW=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
