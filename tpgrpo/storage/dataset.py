"""The dataset API in one place: write shards, finalize, read, inspect.

See `tpgrpo.storage.writer` for the write protocol and `tpgrpo.storage.reader` for the checks every
read performs.
"""

from __future__ import annotations

from tpgrpo.storage.manifest import MANIFEST_NAME, Manifest, PartInfo, manifest_hash, read_manifest
from tpgrpo.storage.reader import iter_batches, open_dataset, read_table, verify_dataset
from tpgrpo.storage.writer import DatasetWriter, finalize_dataset, write_dataset

__all__ = [
    "MANIFEST_NAME",
    "DatasetWriter",
    "Manifest",
    "PartInfo",
    "finalize_dataset",
    "iter_batches",
    "manifest_hash",
    "open_dataset",
    "read_manifest",
    "read_table",
    "verify_dataset",
    "write_dataset",
]
