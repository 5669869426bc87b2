"""Idempotence: what a stage should do with its output dataset, and safe clearing/replacing.

States of an output dataset, given the inputs and config the stage is about to use:

- `"missing"`: nothing there; write it.
- `"debris"`: files but no manifest: a crashed or interrupted run; clear it and redo.
- `"done"`: finished from the same inputs and config; skip the stage.
- `"stale"`: finished, but from other inputs, config or schema version; refuse unless forced.

`prepare_output` turns these into the stage's action. Never rely on Prefect's result cache or on
pyarrow's `existing_data_behavior` for this: the manifest is the only truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from tpgrpo.errors import DataError
from tpgrpo.schemas import stored_schema
from tpgrpo.storage.files import list_files, remove_file, remove_tree
from tpgrpo.storage.manifest import MANIFEST_NAME, Manifest, load_manifest
from tpgrpo.storage.reader import check_parts
from tpgrpo.storage.uri import filesystem_for

DatasetState = Literal["done", "missing", "debris", "stale"]


def dataset_state(
    uri: str,
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    schema_name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> DatasetState:
    """Tells a stage whether its output is done, missing, debris or stale (see module docstring).

    Args:
        uri (`str`): the output dataset directory.
        inputs (`Mapping[str, str]`): input name -> manifest hash, as the stage would record them.
        config_hash (`str`): the stage's config hash.
        schema_name (`str`, *optional*): when given, a finished dataset of another schema name, or of
            a version this code does not read, is `"stale"`.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.

    Raises:
        `DataError`: the dataset has a manifest but its part files do not match it (corruption or
            an interrupted retention): never silently redone.
    """
    fs, path = filesystem_for(uri, storage_options)
    listing = list_files(fs, path)
    if not listing:
        return "missing"
    if MANIFEST_NAME not in listing:
        return "debris"
    manifest = load_manifest(fs, path)
    if manifest is None:  # removed between the listing and the read: a concurrent clear
        return "debris"
    check_parts(fs, path, manifest, uri)
    # an older version still read (`tpgrpo.schemas.READABLE`) is as good as the current one: a run
    # stored before a schema gained nullable columns resumes without redoing its finished stages
    same_schema = schema_name is None or (
        manifest.schema.name == schema_name and stored_schema(manifest.schema) is not None
    )
    if same_schema and manifest.inputs == dict(inputs) and manifest.config_hash == config_hash:
        return "done"
    return "stale"


def clear_dataset(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
    """Deletes a dataset directory and everything in it (debris cleanup).

    The manifest goes first, so a crash half-way leaves debris, never a finished-looking dataset
    with parts missing.
    """
    fs, path = filesystem_for(uri, storage_options)
    remove_file(fs, f"{path}/{MANIFEST_NAME}")
    remove_tree(fs, path)


def replace_safely(uri: str, *, storage_options: Mapping[str, Any] | None = None) -> Manifest | None:
    """Clears a finished dataset for a `--force` rerun: the manifest first, then the parts.

    Readers stop treating it as finished the moment the manifest is gone; a crash before the new
    dataset is finalized leaves debris, which the next run clears.

    Returns:
        `Manifest | None`: the replaced dataset's manifest (for the log), or `None`.
    """
    fs, path = filesystem_for(uri, storage_options)
    old = load_manifest(fs, path)
    clear_dataset(uri, storage_options=storage_options)
    return old


def prepare_output(
    uri: str,
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    schema_name: str | None = None,
    force: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    stale_hint: str | None = None,
) -> Literal["skip", "write"]:
    """Decides and prepares what a stage does with its output dataset.

    - `"done"`: returns `"skip"`, or with `force` replaces it (`replace_safely`) and returns `"write"`;
    - `"stale"`: raises, or with `force` replaces it and returns `"write"`;
    - `"debris"`: clears it and returns `"write"`; `"missing"`: returns `"write"`.

    Call it once per dataset (in the flow), before the shards start writing.

    Args: as `dataset_state`, plus
        force (`bool`, defaults to False): replace a finished dataset (`--force`).
        stale_hint (`str`, *optional*): what to do about stale output (default: rerun with --force).

    Raises:
        `DataError`: stale output and no `force`.
    """
    state = dataset_state(
        uri, inputs=inputs, config_hash=config_hash, schema_name=schema_name, storage_options=storage_options
    )
    if state == "done" and not force:
        return "skip"
    if state == "stale" and not force:
        raise DataError(
            f"{uri} is finished but was built from other inputs, config or schema version than this run's; "
            + (stale_hint or "rerun with --force to replace it")
        )
    if state in ("done", "stale"):
        replace_safely(uri, storage_options=storage_options)
    elif state == "debris":
        clear_dataset(uri, storage_options=storage_options)
    return "write"
