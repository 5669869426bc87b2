"""Filesystem helpers: fresh listings and atomic small writes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tpgrpo.storage.files import list_dirs, list_files, move, remove_tree, write_atomic
from tpgrpo.storage.uri import filesystem_for, join_uri

if TYPE_CHECKING:
    from tests.conftest import StorageRoot


def test_listing_write_move_remove(storage_root: StorageRoot) -> None:
    fs, path = filesystem_for(join_uri(storage_root.uri, "d"), storage_root.storage_options)
    assert list_files(fs, path) is None and list_dirs(fs, path) == []
    write_atomic(fs, f"{path}/a.json", b"1")
    write_atomic(fs, f"{path}/sub/b.json", b"22")
    assert list_files(fs, path) == {"a.json": 1}  # subdirectories left out
    assert list_dirs(fs, path) == ["sub"]
    write_atomic(fs, f"{path}/a.json", b"333")  # replaced whole
    move(fs, f"{path}/sub/b.json", f"{path}/c.json")
    assert list_files(fs, path) == {"a.json": 3, "c.json": 2}
    if storage_root.kind == "local":
        assert not [n for n in os.listdir(path) if n.endswith(".tmp")]  # no temp files left
    remove_tree(fs, path)
    assert list_files(fs, path) is None
