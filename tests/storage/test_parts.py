"""Part naming and the Parquet options chosen for blobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from tpgrpo.schemas import schema_for
from tpgrpo.storage import write_dataset
from tpgrpo.storage.parts import is_data_file, parquet_options, part_name, part_shard, rows_per_group

from . import samples

if TYPE_CHECKING:
    from pathlib import Path


def test_part_names() -> None:
    assert part_name(3, 12) == "part-00003-00012.parquet"
    assert part_shard("part-00003-00012.parquet") == 3
    assert part_shard("_SHARD-00003.json") is None and part_shard("part-3-1.parquet") is None
    assert is_data_file("part-00000-00000.parquet") and is_data_file("foreign.parquet")
    assert not is_data_file("_MANIFEST.json") and not is_data_file(".part.parquet.tmp")


def test_blob_columns_are_stored_plain_and_others_compressed(tmp_path: Path) -> None:
    options = parquet_options(schema_for("rollouts"))
    assert options["compression"]["states"] == "NONE" and options["compression"]["image"] == "NONE"
    assert options["compression"]["sigmas.list.element"] == "ZSTD"
    assert "states" not in options["use_dictionary"] and "states" not in options["write_statistics"]
    manifest = write_dataset(str(tmp_path / "r"), "rollouts", samples.rollouts(4), inputs={}, config_hash="c")
    metadata = pq.ParquetFile(tmp_path / "r" / manifest.parts[0].path).metadata
    columns = {metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i) for i in
               range(metadata.num_columns)}  # fmt: skip
    assert columns["states"].compression == "UNCOMPRESSED" and not columns["states"].is_stats_set
    assert columns["trajectory_id"].compression == "ZSTD" and columns["trajectory_id"].is_stats_set
    assert metadata.schema.to_arrow_schema().metadata[b"tpgrpo.schema_version"] == b"1"


def test_rows_per_group_targets_bytes() -> None:
    import pyarrow as pa

    table = pa.table({"b": pa.array([b"x" * 1000] * 100, pa.large_binary())})
    assert rows_per_group(table, 10_000) in (9, 10)
    assert rows_per_group(table.slice(0, 0), 10_000) == 1
    assert rows_per_group(table, 10) == 1
