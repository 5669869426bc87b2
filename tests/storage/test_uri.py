"""URIs and filesystems: joining, traversal refusal, local vs s3fs resolution."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import s3fs
from fsspec.implementations.local import LocalFileSystem

from tpgrpo.errors import UserError

if TYPE_CHECKING:
    from tests.conftest import S3Bucket
from tpgrpo.storage.uri import filesystem_for, join_uri


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("/data/runs", ("a", "iter=0001"), "/data/runs/a/iter=0001"),
        ("/data/runs/", ("a/b",), "/data/runs/a/b"),
        ("runs", ("x",), "runs/x"),
        ("s3://bucket/prefix/", ("run", "rollouts"), "s3://bucket/prefix/run/rollouts"),
        ("s3://bucket", ("run",), "s3://bucket/run"),
        ("/", ("a",), "/a"),
    ],
)
def test_join_uri(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert join_uri(base, *parts) == expected


@pytest.mark.parametrize("part", ["..", "../etc", "a/../b", "/abs", "", "a//b", ".", "a/"])
def test_join_uri_refuses_traversal_and_empty_segments(part: str) -> None:
    with pytest.raises(UserError, match="invalid path component"):
        join_uri("/data/runs", part)


def test_local_paths_resolve_to_absolute(tmp_path: os.PathLike[str]) -> None:
    fs, path = filesystem_for(f"file://{tmp_path}/x")
    assert isinstance(fs, LocalFileSystem) and path == f"{tmp_path}/x"
    fs, path = filesystem_for("relative/dir")
    assert path == os.path.abspath("relative/dir")


def test_unsupported_scheme_and_bad_options() -> None:
    with pytest.raises(UserError, match="unsupported URI"):
        filesystem_for("gs://bucket/x")
    with pytest.raises(UserError, match="names no bucket"):
        filesystem_for("s3://")
    with pytest.raises(UserError, match="unknown S3 storage option"):
        filesystem_for("s3://bucket/x", {"endpoint": "http://x"})
    fs, path = filesystem_for("/tmp/x", {"key": "k"})  # S3 options do not concern local paths
    assert isinstance(fs, LocalFileSystem) and path == "/tmp/x"


def test_region_is_not_passed_with_an_endpoint() -> None:
    fs, path = filesystem_for("s3://bucket/p", {"endpoint_url": "http://127.0.0.1:1", "region": "eu-west-1"})
    assert isinstance(fs, s3fs.S3FileSystem) and path == "bucket/p"
    assert "region_name" not in fs.client_kwargs
    fs, _ = filesystem_for("s3://bucket/p", {"region": "eu-west-1", "anon": True})
    assert fs.client_kwargs["region_name"] == "eu-west-1"


@pytest.mark.s3
def test_s3_from_explicit_options(s3_bucket: S3Bucket) -> None:
    fs, path = filesystem_for(f"s3://{s3_bucket.bucket}/a/b.txt", s3_bucket.storage_options)
    fs.pipe_file(path, b"hello")
    assert fs.cat_file(path) == b"hello"


@pytest.mark.s3
def test_s3_from_standard_aws_environment(s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    fs, path = filesystem_for(f"s3://{s3_bucket.bucket}/env.txt")
    fs.pipe_file(path, b"from env")
    fs2, _ = filesystem_for(f"s3://{s3_bucket.bucket}", s3_bucket.storage_options)
    assert fs2.cat_file(path) == b"from env"
