"""Writing and reading datasets on local disk and S3: round trips, manifests, refusals."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from tpgrpo.errors import DataError, UserError
from tpgrpo.schemas import SCHEMAS, declare, decode_png, decode_tensor, decode_tensor_column, schema_for
from tpgrpo.storage import (
    DatasetWriter,
    finalize_dataset,
    iter_batches,
    manifest_hash,
    read_manifest,
    read_table,
    verify_dataset,
    write_dataset,
)
from tpgrpo.storage.conform import conform
from tpgrpo.storage.files import list_files, write_atomic
from tpgrpo.storage.uri import filesystem_for, join_uri

from . import samples

if TYPE_CHECKING:
    from tests.conftest import StorageRoot

CONFIG = "c" * 64


def _files(root: StorageRoot, uri: str) -> dict[str, int]:
    fs, path = filesystem_for(uri, root.storage_options)
    return list_files(fs, path) or {}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_round_trip_every_schema(storage_root: StorageRoot, name: str) -> None:
    uri = join_uri(storage_root.uri, name)
    rows = samples.sample(name, 9)
    write_dataset(
        uri, name, rows, inputs={}, config_hash=CONFIG, storage_options=storage_root.storage_options
    )
    table = read_table(uri, name, storage_options=storage_root.storage_options)
    expected = conform(rows, schema_for(name))
    assert table.schema.equals(schema_for(name), check_metadata=True)
    assert table.equals(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rollout_tensors_and_images_are_exact(storage_root: StorageRoot, dtype: torch.dtype) -> None:
    uri = join_uri(storage_root.uri, "rollouts")
    rows = samples.rollouts(6, dtype=dtype)
    write_dataset(
        uri, "rollouts", rows, inputs={}, config_hash=CONFIG, storage_options=storage_root.storage_options
    )
    table = read_table(uri, "rollouts", storage_options=storage_root.storage_options)
    stacked = decode_tensor_column(table, "states")  # [6, T+1, C, H, W]
    assert stacked.dtype == dtype and stacked.shape == (6, 5, *samples.LATENT)
    for i, row in enumerate(table.to_pylist()):
        original = decode_tensor(rows["states"][i], rows["states_dtype"][i], rows["states_shape"][i])
        assert row["states"] == rows["states"][i]  # byte-identical payload
        assert torch.equal(stacked[i].view(torch.uint8), original.view(torch.uint8))
        assert (row["ode_states"] is None) == (i % 2 == 1)
        assert decode_png(row["image"]).tolist() == decode_png(rows["image"][i]).tolist()


def test_manifest_contents(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    inputs = {"branches": "b" * 64}
    manifest = write_dataset(
        uri,
        "rewards",
        samples.rewards(10),
        inputs=inputs,
        config_hash=CONFIG,
        model_evals=42,
        metrics={"score_mean": 0.5, "n": 10},
        timings={"score_s": 1.5},
        storage_options=storage_root.storage_options,
    )
    assert read_manifest(uri, storage_root.storage_options) == manifest
    fs, path = filesystem_for(uri, storage_root.storage_options)
    raw = json.loads(fs.cat_file(f"{path}/_MANIFEST.json"))
    assert raw["format"] == "tpgrpo.dataset/1"
    assert raw["schema"]["name"] == "rewards" and raw["schema"]["version"] == 1
    assert [f["name"] for f in raw["schema"]["fields"]] == schema_for("rewards").names
    assert raw["rows"] == 10 and raw["inputs"] == inputs and raw["config_hash"] == CONFIG
    assert raw["model_evals"] == 42 and raw["metrics"] == {"score_mean": 0.5, "n": 10}
    assert (
        raw["timings"]["score_s"] == 1.5 and raw["timings"]["write_s"] >= 0 and "finalize_s" in raw["timings"]
    )
    assert re.match(r"\d+\.\d+\.\d+", raw["code_version"]) and raw["created"].endswith("+00:00")
    assert raw["retention"] is None
    (part,) = raw["parts"]
    assert part["path"] == "part-00000-00000.parquet" and part["rows"] == 10 and part["shard"] == 0
    assert _files(storage_root, uri) == {"part-00000-00000.parquet": part["bytes"], "_MANIFEST.json": _files(
        storage_root, uri)["_MANIFEST.json"]}  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", part["sha256"])
    assert manifest_hash(uri, storage_root.storage_options) == raw["hash"]
    assert verify_dataset(uri, storage_options=storage_root.storage_options) == manifest


def test_manifest_hash_tracks_content_and_lineage(tmp_path: object) -> None:
    a = write_dataset(f"{tmp_path}/a", "rewards", samples.rewards(4), inputs={}, config_hash=CONFIG)
    b = write_dataset(f"{tmp_path}/b", "rewards", samples.rewards(4), inputs={}, config_hash=CONFIG)
    c = write_dataset(f"{tmp_path}/c", "rewards", samples.rewards(4), inputs={"x": "1"}, config_hash=CONFIG)
    d = write_dataset(f"{tmp_path}/d", "rewards", samples.rewards(5), inputs={}, config_hash=CONFIG)
    assert a.hash == b.hash  # same bytes, same lineage: same identity
    assert len({a.hash, c.hash, d.hash}) == 3


def test_parts_rotate_and_stream_in_batches(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rollouts")
    options = storage_root.storage_options
    with DatasetWriter(uri, "rollouts", max_part_rows=4, storage_options=options) as writer:
        writer.write(samples.rollouts(6, offset=0))
        writer.write(pa.table(samples.rollouts(5, offset=6)))  # a table works as well as a mapping
        assert writer.rows == 11
    manifest = finalize_dataset(
        uri, "rollouts", inputs={}, config_hash=CONFIG, shards=1, storage_options=options
    )
    assert [p.rows for p in manifest.parts] == [4, 4, 3]
    assert [p.path for p in manifest.parts] == [f"part-00000-0000{i}.parquet" for i in range(3)]
    batches = list(iter_batches(uri, "rollouts", columns=["trajectory_id", "states"], batch_size=2,
                                storage_options=options))  # fmt: skip
    assert max(b.num_rows for b in batches) == 2
    assert pa.Table.from_batches(batches).column("trajectory_id").to_pylist() == list(range(11))
    default = list(iter_batches(uri, "rollouts", storage_options=options))
    assert sum(b.num_rows for b in default) == 11


def test_part_rotation_by_bytes(tmp_path: object) -> None:
    uri = f"{tmp_path}/rollouts"
    with DatasetWriter(uri, "rollouts", max_part_bytes=20_000, row_group_bytes=8_000) as writer:
        writer.write(samples.rollouts(12))
    manifest = finalize_dataset(uri, "rollouts", inputs={}, config_hash=CONFIG)
    assert len(manifest.parts) > 1 and manifest.rows == 12
    assert all(p.bytes < 20_000 + 30_000 for p in manifest.parts)
    verify_dataset(uri)  # the SHA-256 hashed alongside many small row-group writes matches the bytes


def test_columns_and_filters(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    write_dataset(uri, "rewards", samples.rewards(12), inputs={}, config_hash=CONFIG, storage_options=options)
    table = read_table(uri, "rewards", columns=["trajectory_id", "score"], filter=pc.field("boundary") == 3,
                       storage_options=options)  # fmt: skip
    assert table.column_names == ["trajectory_id", "score"]
    assert table.column("trajectory_id").to_pylist() == [0, 1, 2]
    with pytest.raises(UserError, match=r"unknown column\(s\) \['scor'\]"):
        read_table(uri, "rewards", columns=["scor"], storage_options=options)


def test_empty_dataset_has_a_schema_carrying_part(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "updates")
    options = storage_root.storage_options
    manifest = write_dataset(
        uri, "updates", samples.updates(0), inputs={}, config_hash=CONFIG, storage_options=options
    )
    assert manifest.rows == 0 and len(manifest.parts) == 1
    table = read_table(uri, "updates", storage_options=options)
    assert table.num_rows == 0 and table.schema.names == schema_for("updates").names


def test_unfinished_dataset_is_refused(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    with DatasetWriter(uri, "rewards", storage_options=options) as writer:
        writer.write(samples.rewards(3))
    with pytest.raises(DataError, match="not a finished dataset"):
        read_table(uri, "rewards", storage_options=options)
    with pytest.raises(DataError, match="not a finished dataset"):
        iter_batches(uri, "rewards", storage_options=options)
    with pytest.raises(DataError, match="not a finished dataset"):
        read_manifest(join_uri(storage_root.uri, "nothing-here"), options)


def test_schema_version_mismatch_is_refused(
    storage_root: StorageRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    write_dataset(uri, "rewards", samples.rewards(3), inputs={}, config_hash=CONFIG, storage_options=options)
    monkeypatch.setitem(SCHEMAS, "rewards", declare("rewards", 2, list(schema_for("rewards"))))
    with pytest.raises(DataError, match=r"holds dataset schema 'rewards' v1, expected 'rewards' v2.*older"):
        read_table(uri, "rewards", storage_options=options)
    with pytest.raises(DataError, match=r"'rewards' v1, expected 'rewards' v2"):
        iter_batches(uri, "rewards", storage_options=options)
    monkeypatch.undo()
    with pytest.raises(
        DataError, match=r"holds dataset schema 'rewards' v1, expected 'branches' v1.*another kind"
    ):
        read_table(uri, "branches", storage_options=options)


def test_tampered_parts_are_refused(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    write_dataset(uri, "rewards", samples.rewards(3), inputs={}, config_hash=CONFIG, storage_options=options)
    fs, path = filesystem_for(uri, options)
    original = fs.cat_file(f"{path}/part-00000-00000.parquet")
    write_atomic(fs, f"{path}/part-00001-00000.parquet", original)
    with pytest.raises(DataError, match=r"part-00001-00000\.parquet: not in the manifest"):
        read_table(uri, "rewards", storage_options=options)
    fs.rm_file(f"{path}/part-00001-00000.parquet")
    corrupted = bytearray(original)
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size: only the checksum notices
    write_atomic(fs, f"{path}/part-00000-00000.parquet", bytes(corrupted))
    with pytest.raises(DataError, match="SHA-256"):
        verify_dataset(uri, storage_options=options)
    fs.rm_file(f"{path}/part-00000-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000-00000\.parquet: missing"):
        read_table(uri, "rewards", storage_options=options)


def test_writer_refuses_a_finished_dataset_and_bad_rows(storage_root: StorageRoot) -> None:
    uri = join_uri(storage_root.uri, "rewards")
    options = storage_root.storage_options
    write_dataset(uri, "rewards", samples.rewards(3), inputs={}, config_hash=CONFIG, storage_options=options)
    with pytest.raises(DataError, match="finished dataset"):
        DatasetWriter(uri, "rewards", shard=1, storage_options=options)
    with pytest.raises(DataError, match="finished dataset"):
        finalize_dataset(uri, "rewards", inputs={}, config_hash=CONFIG, storage_options=options)
    other = join_uri(storage_root.uri, "other")
    writer = DatasetWriter(other, "rewards", storage_options=options)
    with pytest.raises(DataError, match="missing required column"):
        writer.write({"score": [1.0]})
    writer.write(samples.rewards(2))  # a refused write leaves the writer usable
    writer.close()
    with pytest.raises(DataError, match="already closed"):
        writer.write(samples.rewards(2))
    with pytest.raises(UserError, match="invalid shard"):
        DatasetWriter(other, "rewards", shard=-1, storage_options=options)


def test_non_finite_metrics_are_refused(tmp_path: object) -> None:
    with pytest.raises(DataError, match="finite"):
        write_dataset(f"{tmp_path}/r", "rewards", samples.rewards(2), inputs={}, config_hash=CONFIG,
                      metrics={"kl": float("nan")})  # fmt: skip
