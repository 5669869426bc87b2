"""Removing runs and the debris of crashed stages: `tpgrpo runs rm` and `tpgrpo runs gc`.

Debris is what an interrupted writer leaves: a dataset or checkpoint folder with files but no
manifest (`_MANIFEST.json`, a checkpoint's `_CHECKPOINT.json`), and the temp files of atomic writes
(`.<name>.<32 hex>.tmp`, local disk only: S3 puts are atomic). The stages clear their own debris
before redoing it, so removing it never loses data; `gc` exists for the space it holds and for
runs nobody will resume. A retention rewrite's staging folder is not debris: the next retention
pass finishes it.

Both hold the run's lock while they remove, so they never race a `train` or `rescore` of the run;
a run whose lock is live is refused. `remove_run` deletes `run.json` first: a crash half-way leaves
a folder that is no longer listed as a run, and `runs rm` of the same id finishes the job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tpgrpo.storage.blobs import BLOB_MANIFEST
from tpgrpo.storage.files import exists, list_files, remove_file, remove_tree
from tpgrpo.storage.layout import RunLayout
from tpgrpo.storage.lock import run_lock
from tpgrpo.storage.manifest import MANIFEST_NAME
from tpgrpo.storage.uri import filesystem_for, join_uri

TEMP_FILE = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
"""The name `files.write_atomic` gives a file before its rename."""


@dataclass(frozen=True)
class Debris:
    """One thing `gc` removes.

    Args:
        uri (`str`): the folder (an unfinished dataset or checkpoint) or file (a temp file).
        kind (`str`): `"unfinished dataset"`, `"unfinished checkpoint"` or `"temp file"`.
        files (`int`): files it holds (1 for a temp file).
        bytes (`int`): their total size.
    """

    uri: str
    kind: str
    files: int
    bytes: int


def dataset_dirs(layout: RunLayout) -> Iterator[tuple[str, str]]:
    """`(uri, kind)` of every folder where the run keeps a dataset or a checkpoint and that exists."""
    yield layout.prompts(), "dataset"
    for i in layout.list_iterations():
        yield layout.rollouts(i), "dataset"
        yield layout.branches(i), "dataset"
        for key in layout.list_rewards(i):
            yield layout.rewards(i, key), "dataset"
            for mode in layout.list_annotations(i, key):
                yield layout.annotations(i, key, mode), "dataset"
        yield layout.updates(i), "dataset"
    for k in layout.list_checkpoints():
        yield layout.checkpoint(k), "checkpoint"
    for name, key in layout.list_evals():
        yield layout.eval(name, key), "dataset"


def find_debris(layout: RunLayout, storage_options: Mapping[str, Any] | None = None) -> list[Debris]:
    """The run's unfinished datasets and checkpoints and its stale temp files, in layout order."""
    found: list[Debris] = []
    for uri, kind in dataset_dirs(layout):
        fs, path = filesystem_for(uri, storage_options)
        listing = list_files(fs, path)
        if listing and MANIFEST_NAME not in listing and BLOB_MANIFEST not in listing:
            found.append(Debris(uri, f"unfinished {kind}", len(listing), sum(listing.values())))
    fs, path = filesystem_for(layout.run_dir, storage_options)
    for name, info in sorted(fs.find(path, detail=True).items()):
        if TEMP_FILE.fullmatch(name.rsplit("/", 1)[-1]):
            uri = join_uri(layout.run_dir, name[len(path.rstrip("/")) + 1 :])
            found.append(Debris(uri, "temp file", 1, int(info.get("size") or 0)))
    return found


def collect_debris(layout: RunLayout, storage_options: Mapping[str, Any] | None = None) -> list[Debris]:
    """Remove the run's debris under its lock; returns what was removed.

    Raises:
        RunLockedError: the run is being trained or rescored (its debris is work in progress).
    """
    with run_lock(layout.lock(), storage_options):
        debris = find_debris(layout, storage_options)
        for item in debris:
            fs, path = filesystem_for(item.uri, storage_options)
            if item.kind == "temp file":
                remove_file(fs, path)
            else:
                remove_tree(fs, path)
    return debris


@dataclass(frozen=True)
class RunFiles:
    """What a run folder holds: `files` and their total `bytes`; `is_run`: it has a `run.json`."""

    files: int
    bytes: int
    is_run: bool


def run_files(layout: RunLayout, storage_options: Mapping[str, Any] | None = None) -> RunFiles | None:
    """The size of the run's folder, or `None` when nothing is stored under its id."""
    fs, path = filesystem_for(layout.run_dir, storage_options)
    fs.invalidate_cache(path)
    sizes = [int(info.get("size") or 0) for info in fs.find(path, detail=True).values()]
    if not sizes:
        return None
    run_json = filesystem_for(layout.run_json(), storage_options)[1]
    return RunFiles(len(sizes), sum(sizes), exists(fs, run_json))


def remove_run(layout: RunLayout, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete everything stored for the run: `run.json` first, then the rest, under the run's lock.

    Raises:
        RunLockedError: the run is being trained or rescored.
    """
    fs, path = filesystem_for(layout.run_dir, storage_options)
    lock = filesystem_for(layout.lock(), storage_options)[1]
    with run_lock(layout.lock(), storage_options):
        remove_file(fs, filesystem_for(layout.run_json(), storage_options)[1])  # no longer a run
        fs.invalidate_cache(path)
        for entry in fs.ls(path, detail=False):
            name = entry.rstrip("/")
            if name == lock.rstrip("/"):
                continue  # released (deleted) by run_lock on the way out
            if fs.isdir(name):
                remove_tree(fs, name)
            else:
                remove_file(fs, name)
    remove_tree(fs, path)
