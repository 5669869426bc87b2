"""Idempotence: done / missing / debris / stale, clearing and forced replacement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tpgrpo.errors import DataError
from tpgrpo.schemas import SCHEMAS, declare, schema_for
from tpgrpo.storage import (
    DatasetWriter,
    clear_dataset,
    dataset_state,
    prepare_output,
    read_table,
    replace_safely,
    write_dataset,
)
from tpgrpo.storage import state as state_module
from tpgrpo.storage.files import list_files
from tpgrpo.storage.uri import filesystem_for, join_uri

from . import samples

if TYPE_CHECKING:
    from tests.conftest import StorageRoot

CONFIG = "c" * 64
INPUTS = {"branches": "b" * 64}


def _finished(root: StorageRoot) -> str:
    uri = join_uri(root.uri, "rewards")
    write_dataset(uri, "rewards", samples.rewards(4), inputs=INPUTS, config_hash=CONFIG,
                  storage_options=root.storage_options)  # fmt: skip
    return uri


def test_states(storage_root: StorageRoot, monkeypatch: pytest.MonkeyPatch) -> None:
    options = storage_root.storage_options
    uri = join_uri(storage_root.uri, "rewards")

    def state(inputs: dict[str, str] = INPUTS, config: str = CONFIG) -> str:
        return dataset_state(
            uri, inputs=inputs, config_hash=config, schema_name="rewards", storage_options=options
        )

    assert state() == "missing"
    with DatasetWriter(uri, "rewards", storage_options=options) as writer:  # parts written, no manifest
        writer.write(samples.rewards(4))
    assert state() == "debris"
    clear_dataset(uri, storage_options=options)
    assert state() == "missing"
    _finished(storage_root)
    assert state() == "done"
    assert state(config="d" * 64) == "stale"
    assert state(inputs={"branches": "e" * 64}) == "stale"
    assert state(inputs={}) == "stale"
    monkeypatch.setitem(SCHEMAS, "rewards", declare("rewards", 2, list(schema_for("rewards"))))
    assert state() == "stale"


def test_prepare_output(storage_root: StorageRoot) -> None:
    options = storage_root.storage_options
    uri = join_uri(storage_root.uri, "rewards")
    kwargs = {"inputs": INPUTS, "config_hash": CONFIG, "schema_name": "rewards", "storage_options": options}
    assert prepare_output(uri, **kwargs) == "write"  # missing
    with DatasetWriter(uri, "rewards", storage_options=options) as writer:
        writer.write(samples.rewards(4))
    assert prepare_output(uri, **kwargs) == "write"  # debris: cleared
    fs, path = filesystem_for(uri, options)
    assert not list_files(fs, path)
    _finished(storage_root)
    assert prepare_output(uri, **kwargs) == "skip"
    with pytest.raises(DataError, match=r"built from other inputs, config or schema.*--force"):
        prepare_output(uri, **{**kwargs, "config_hash": "d" * 64})
    assert read_table(uri, "rewards", storage_options=options).num_rows == 4  # refusal touched nothing
    assert prepare_output(uri, **{**kwargs, "config_hash": "d" * 64, "force": True}) == "write"
    assert not list_files(fs, path)
    _finished(storage_root)
    assert prepare_output(uri, **{**kwargs, "force": True}) == "write"  # forced rerun of a done stage
    assert dataset_state(uri, inputs=INPUTS, config_hash=CONFIG, storage_options=options) == "missing"


def test_replace_safely_removes_the_manifest_first(
    storage_root: StorageRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = storage_root.storage_options
    uri = _finished(storage_root)

    def crash(*args: object) -> None:
        raise OSError("simulated crash while deleting parts")

    monkeypatch.setattr(state_module, "remove_tree", crash)
    with pytest.raises(OSError, match="simulated crash"):
        replace_safely(uri, storage_options=options)
    # the crash left parts behind, but never a dataset that still looks finished
    assert dataset_state(uri, inputs=INPUTS, config_hash=CONFIG, storage_options=options) == "debris"
    with pytest.raises(DataError, match="not a finished dataset"):
        read_table(uri, "rewards", storage_options=options)
    monkeypatch.undo()
    old = replace_safely(uri, storage_options=options)
    assert old is None
    assert dataset_state(uri, inputs=INPUTS, config_hash=CONFIG, storage_options=options) == "missing"


def test_replace_safely_returns_the_old_manifest(tmp_path: object) -> None:
    uri = f"{tmp_path}/rewards"
    manifest = write_dataset(uri, "rewards", samples.rewards(2), inputs={}, config_hash=CONFIG)
    assert replace_safely(uri) == manifest


def test_corrupted_finished_dataset_is_not_silently_redone(storage_root: StorageRoot) -> None:
    options = storage_root.storage_options
    uri = _finished(storage_root)
    fs, path = filesystem_for(uri, options)
    fs.rm_file(f"{path}/part-00000-00000.parquet")
    with pytest.raises(DataError, match="do not match the manifest"):
        dataset_state(uri, inputs=INPUTS, config_hash=CONFIG, storage_options=options)
