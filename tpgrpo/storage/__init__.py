"""The data plane: URIs, run layout, Parquet datasets with manifests, idempotence, retention.

Stages receive dataset URIs from `RunLayout` and use `DatasetWriter` / `finalize_dataset` /
`read_table` / `iter_batches`; flows use `prepare_output` to skip, clear or replace outputs.
Only this package touches filesystems (fsspec, s3fs).
"""

from __future__ import annotations

from tpgrpo.storage.dataset import (
    MANIFEST_NAME,
    DatasetWriter,
    Manifest,
    PartInfo,
    finalize_dataset,
    iter_batches,
    manifest_hash,
    open_dataset,
    read_manifest,
    read_table,
    verify_dataset,
    write_dataset,
)
from tpgrpo.storage.layout import (
    RunLayout,
    list_runs,
    read_run_record,
    validate_checkpoint,
    validate_key,
    validate_run_id,
    write_run_record,
)
from tpgrpo.storage.provenance import code_version, config_hash
from tpgrpo.storage.retention import drop_latents
from tpgrpo.storage.state import clear_dataset, dataset_state, prepare_output, replace_safely
from tpgrpo.storage.uri import filesystem_for, join_uri

__all__ = [
    "MANIFEST_NAME",
    "DatasetWriter",
    "Manifest",
    "PartInfo",
    "RunLayout",
    "clear_dataset",
    "code_version",
    "config_hash",
    "dataset_state",
    "drop_latents",
    "filesystem_for",
    "finalize_dataset",
    "iter_batches",
    "join_uri",
    "list_runs",
    "manifest_hash",
    "open_dataset",
    "prepare_output",
    "read_manifest",
    "read_run_record",
    "read_table",
    "replace_safely",
    "validate_checkpoint",
    "validate_key",
    "validate_run_id",
    "verify_dataset",
    "write_dataset",
    "write_run_record",
]
