"""Parallel shard writers, restarts and interrupted writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING

import pyarrow.compute as pc
import pytest

from tpgrpo.errors import DataError
from tpgrpo.storage import DatasetWriter, dataset_state, finalize_dataset, read_table
from tpgrpo.storage.files import list_files
from tpgrpo.storage.uri import filesystem_for, join_uri

from . import samples

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import StorageRoot

CONFIG = "c" * 64
SHARDS = 4
ROWS_PER_SHARD = 6


def _write_shard(uri: str, shard: int, options: dict[str, str] | None) -> None:
    with DatasetWriter(uri, "rewards", shard=shard, max_part_rows=4, storage_options=options) as writer:
        writer.write(samples.rewards(ROWS_PER_SHARD, offset=shard * ROWS_PER_SHARD))


def _check_all_shards(uri: str, options: dict[str, str] | None) -> None:
    manifest = finalize_dataset(
        uri, "rewards", inputs={}, config_hash=CONFIG, shards=SHARDS, storage_options=options
    )
    assert manifest.rows == SHARDS * ROWS_PER_SHARD
    assert sorted({p.shard for p in manifest.parts}) == list(range(SHARDS))
    assert len(manifest.parts) == 2 * SHARDS  # 6 rows at 4 per part
    table = read_table(uri, "rewards", storage_options=options).sort_by("score")
    expected = samples.rewards(SHARDS * ROWS_PER_SHARD)
    assert table.column("score").to_pylist() == expected["score"]
    fs, path = filesystem_for(uri, options)
    assert not [
        n for n in list_files(fs, path) or {} if n.startswith("_SHARD")
    ]  # records folded into manifest


def test_concurrent_shard_threads(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    errors: list[BaseException] = []

    def run(shard: int) -> None:
        try:
            _write_shard(uri, shard, storage_root.storage_options)
        except BaseException as error:  # surfaced below; a thread cannot raise into the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(SHARDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _check_all_shards(uri, storage_root.storage_options)


SHARD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from tpgrpo.storage import DatasetWriter
    uri, shards, crash = sys.argv[1], sys.argv[2].split(","), sys.argv[3] == "crash"
    for shard in map(int, shards):
        writer = DatasetWriter(uri, "rewards", shard=shard, max_part_rows=4)
        rows = 6
        writer.write({
            "iteration": [0] * rows, "trajectory_id": [(shard * rows + i) // 4 for i in range(rows)],
            "boundary": [(shard * rows + i) % 4 for i in range(rows)], "reward_key": ["shapes"] * rows,
            "score": [(shard * rows + i) / 7 for i in range(rows)],
        })
        if crash:
            os._exit(1)  # like a killed worker: no close, no shard record
        writer.close()
    """
)


def _env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    env = dict(os.environ)
    if kind == "s3":  # the worker gets its credentials the standard way, from the environment
        env.update(request.getfixturevalue("s3_bucket").env)
    return env


@pytest.mark.parametrize("kind", ["local", pytest.param("s3", marks=[pytest.mark.s3, pytest.mark.slow])])
def test_concurrent_shard_processes(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # on S3 the thread test covers concurrency; this variant adds separate clients with env credentials
    bucket = request.getfixturevalue("s3_bucket") if kind == "s3" else None
    root, options = (bucket.root, bucket.storage_options) if bucket else (str(tmp_path / "runs"), None)
    uri = join_uri(root, "rewards")
    env = _env(kind, request)
    # two worker processes, two shards each (one interpreter start per worker keeps the test fast)
    workers = [
        subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, uri, s, "ok"], env=env) for s in ("0,2", "1,3")
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    manifest = finalize_dataset(
        uri,
        "rewards",
        inputs={},
        config_hash=CONFIG,
        shards=SHARDS,
        storage_options=options,
    )
    assert manifest.rows == SHARDS * 6
    table = read_table(uri, "rewards", filter=pc.field("score") >= 0, storage_options=options)
    assert sorted(table.column("score").to_pylist()) == [i / 7 for i in range(SHARDS * 6)]


def test_killed_shard_leaves_no_finished_dataset_and_restarts_cleanly(
    storage_root: StorageRoot, request: pytest.FixtureRequest
) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    _write_shard(uri, 1, options)
    crashed = subprocess.run(
        [sys.executable, "-c", SHARD_SCRIPT, uri, "0", "crash"], env=_env(storage_root.kind, request)
    )
    assert crashed.returncode == 1
    fs, path = filesystem_for(uri, options)
    leftovers = list_files(fs, path) or {}
    assert "_SHARD-00000.json" not in leftovers and "_MANIFEST.json" not in leftovers
    assert dataset_state(uri, inputs={}, config_hash=CONFIG, storage_options=options) == "debris"
    with pytest.raises(DataError, match=r"expected shards 0 … 1 to have finished, found \[1\]"):
        finalize_dataset(uri, "rewards", inputs={}, config_hash=CONFIG, shards=2, storage_options=options)
    _write_shard(uri, 0, options)  # the restarted shard removes its own leftovers first
    manifest = finalize_dataset(
        uri, "rewards", inputs={}, config_hash=CONFIG, shards=2, storage_options=options
    )
    assert manifest.rows == 2 * ROWS_PER_SHARD
    assert dataset_state(uri, inputs={}, config_hash=CONFIG, storage_options=options) == "done"


def test_parts_without_a_shard_record_block_finalize(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    _write_shard(uri, 0, options)
    unfinished = DatasetWriter(uri, "rewards", shard=2, max_part_rows=4, storage_options=options)
    unfinished.write(samples.rewards(6))  # one full part closed, one open: never recorded
    with pytest.raises(DataError, match=r"belong to no finished shard \(shards \[2\] did not finish\)"):
        finalize_dataset(uri, "rewards", inputs={}, config_hash=CONFIG, storage_options=options)
    unfinished.abort()  # discards shard 2's parts
    manifest = finalize_dataset(uri, "rewards", inputs={}, config_hash=CONFIG, storage_options=options)
    assert {p.shard for p in manifest.parts} == {0}


def test_exception_in_writer_context_discards_the_shard(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    writer = DatasetWriter(uri, "rewards", max_part_rows=4, storage_options=options)
    with pytest.raises(RuntimeError, match="boom"), writer:
        writer.write(samples.rewards(6))
        raise RuntimeError("boom")
    fs, path = filesystem_for(uri, options)
    assert not list_files(fs, path)
    with pytest.raises(DataError, match=r"nothing to finalize|expected at least one shard"):
        finalize_dataset(uri, "rewards", inputs={}, config_hash=CONFIG, storage_options=options)
