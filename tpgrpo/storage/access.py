"""Is the runs root usable? One cheap request before any work, and a one-line answer if not.

A missing S3 credential, an unreachable endpoint, a bucket that does not exist or access refused
otherwise surface deep inside a command as a botocore traceback (or, for a missing bucket, as an
empty listing: "no runs"). `check_root` asks once — `HeadBucket` on S3, a stat locally — and
turns each cause into a `StorageAccessError` naming the root, what is missing and the fix.
`describe_storage_failure` does the same for one of these errors raised later (credentials that
expire mid-run, an endpoint that goes away).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tpgrpo.errors import StorageAccessError
from tpgrpo.storage.uri import filesystem_for, is_s3

CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment, or "
    "storage.s3.key and storage.s3.secret in the config"
)


def _endpoint(storage_options: Mapping[str, Any] | None) -> tuple[str, str]:
    """(the S3 endpoint in use, where it was set)."""
    configured = (storage_options or {}).get("endpoint_url")
    if configured:
        return str(configured), "storage.s3.endpoint_url"
    if os.environ.get("AWS_ENDPOINT_URL"):
        return os.environ["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL"
    return "the AWS default endpoint", "AWS_ENDPOINT_URL (for MinIO or another S3 service)"


def describe_storage_failure(
    err: BaseException, root: str, storage_options: Mapping[str, Any] | None = None
) -> StorageAccessError | None:
    """The one-line `StorageAccessError` for an S3 access failure, or None when `err` is none of them.

    Recognised: botocore's missing or partial credentials, a connection that cannot be made to the
    endpoint, and (from s3fs) access refused.
    """
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(err, NoCredentialsError):
        return StorageAccessError(f"no S3 credentials found for runs root {root}: {CREDENTIALS_FIX}")
    if isinstance(err, PartialCredentialsError):
        return StorageAccessError(
            f"incomplete S3 credentials for runs root {root} ({err}): {CREDENTIALS_FIX}"
        )
    if isinstance(err, EndpointConnectionError | ConnectTimeoutError):
        endpoint, where = _endpoint(storage_options)
        return StorageAccessError(
            f"cannot reach the S3 endpoint {endpoint} of runs root {root} ({err}); check {where} and "
            "that the service is up, then run the command again"
        )
    if isinstance(err, PermissionError):
        return StorageAccessError(
            f"S3 refused access to runs root {root} ({err}); check that the credentials (AWS_ACCESS_KEY_ID "
            "… or storage.s3.key/secret) are valid and allowed to read and write the bucket"
        )
    return None


def check_root(root: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Checks that the runs root can be used, before any work.

    Locally: the root may be absent (it is created on the first write) but must not be a file. On
    S3: one `HeadBucket` request answers for the credentials, the endpoint, the bucket and access.

    Raises:
        `StorageAccessError`: one line naming the root, the cause and the fix.
        `UserError`: an unsupported or malformed root URI.
    """
    fs, path = filesystem_for(root, storage_options)
    if not is_s3(root):
        if os.path.exists(path) and not os.path.isdir(path):
            raise StorageAccessError(
                f"runs root {root} is a file, not a directory; pass --root (or storage.root) a directory "
                "or s3://bucket/prefix"
            )
        return
    from botocore.exceptions import BotoCoreError

    bucket = path.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StorageAccessError(
            f"S3 bucket {bucket!r} of runs root {root} does not exist at {_endpoint(storage_options)[0]}; "
            "create it, or fix --root (or storage.root)"
        ) from None
    except (BotoCoreError, OSError) as err:
        described = describe_storage_failure(err, root, storage_options)
        if described is None:
            raise
        raise described from None
