"""Dataset URIs and the filesystems behind them.

A URI is a local path (absolute, relative or `file://…`) or `s3://bucket/prefix`. S3 endpoint
and credentials come from the standard AWS environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles) unless explicit
storage options are given. Storage options are never written to any file or message.

This module (with the rest of `tpgrpo.storage`) is the only code that imports s3fs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from pydantic import SecretStr

from tpgrpo.errors import UserError

# storage option names accepted for S3, passed to s3fs.S3FileSystem as is (except `region`)
S3_OPTIONS = frozenset(
    {
        "endpoint_url",
        "key",
        "secret",
        "token",
        "anon",
        "profile",
        "region",
        "use_ssl",
        "client_kwargs",
        "config_kwargs",
    }
)


def is_s3(uri: str) -> bool:
    """Whether a URI points to S3 (`s3://…`)."""
    return uri.startswith("s3://")


def _check_part(part: str) -> list[str]:
    segments = part.split("/")
    if not part or part.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise UserError(
            f"invalid path component {part!r}: empty, absolute, '.' or '..' segments are not allowed"
        )
    return segments


def join_uri(base: str, *parts: str) -> str:
    """Joins path components onto a local path or `s3://` URI.

    Args:
        base (`str`): local path or `s3://bucket/prefix`.
        *parts (`str`): relative components; may contain `/` but no empty, `.` or `..` segments.

    Returns:
        `str`: the joined URI, without a trailing slash.

    Raises:
        `UserError`: a component is empty, absolute or traverses upwards.
    """
    if not base:
        raise UserError("empty base URI")
    joined = base.rstrip("/") or "/"
    for part in parts:
        _check_part(part)
        joined = joined + part if joined.endswith("/") else f"{joined}/{part}"
    return joined


def _s3_kwargs(storage_options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(storage_options) - S3_OPTIONS)
    if unknown:
        raise UserError(f"unknown S3 storage option(s) {unknown}; allowed: {sorted(S3_OPTIONS)}")
    # credentials may come wrapped in pydantic's SecretStr (see Config.storage_options)
    kwargs: dict[str, Any] = {
        k: v.get_secret_value() if isinstance(v, SecretStr) else v
        for k, v in storage_options.items()
        if k != "region" and v is not None
    }
    region = storage_options.get("region")
    # custom endpoints (MinIO, moto) need no region; s3fs misbehaves when one is forced onto them
    if region and "endpoint_url" not in kwargs and not os.environ.get("AWS_ENDPOINT_URL"):
        kwargs["client_kwargs"] = {**kwargs.get("client_kwargs", {}), "region_name": region}
    return kwargs


def filesystem_for(
    uri: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolves a URI to an fsspec filesystem and the path within it.

    Args:
        uri (`str`): local path, `file://` URL or `s3://bucket/prefix`.
        storage_options (`Mapping[str, Any]`, *optional*): for S3 only: `endpoint_url`, `key`,
            `secret`, `token`, `anon`, `profile`, `region` (ignored when an endpoint is set),
            `use_ssl`, `client_kwargs`, `config_kwargs`. Unset: the standard AWS environment.
            Ignored for local paths (a config may carry S3 options while a run uses a local root).

    Returns:
        `tuple[fsspec.AbstractFileSystem, str]`: the filesystem (s3fs for S3, local otherwise) and
        the path (`bucket/prefix` for S3, an absolute path locally).

    Raises:
        `UserError`: unsupported scheme, S3 URI without bucket, unknown storage option.
    """
    if is_s3(uri):
        import s3fs

        path = uri.removeprefix("s3://").strip("/")
        if not path:
            raise UserError(f"S3 URI {uri!r} names no bucket; use s3://bucket/prefix")
        return s3fs.S3FileSystem(**_s3_kwargs(storage_options or {})), path
    if "://" in uri and not uri.startswith("file://"):
        raise UserError(f"unsupported URI {uri!r}: use a local path or s3://bucket/prefix")
    path = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return LocalFileSystem(), path
