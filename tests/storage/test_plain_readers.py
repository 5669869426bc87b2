"""Finished datasets are readable by plain pyarrow and DuckDB, without tpgrpo's readers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
import torch

from tpgrpo.storage import DatasetWriter, RunLayout, finalize_dataset, write_dataset

from . import samples

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import S3Bucket

CONFIG = "c" * 64

# runs in a fresh interpreter: only pyarrow, duckdb and numpy, and it checks tpgrpo never got imported
PLAIN_READER = textwrap.dedent(
    """
    import json, sys
    import duckdb, numpy as np, pyarrow.dataset as ds
    rollouts, rewards = sys.argv[1], sys.argv[2]
    table = ds.dataset(rollouts, format="parquet").to_table().sort_by("trajectory_id")
    row = table.slice(0, 1).to_pylist()[0]
    states = np.frombuffer(row["states"], dtype=np.uint16).astype(np.uint32) << 16  # bf16 -> f32 bits
    first = states.view(np.float32).reshape(row["states_shape"])
    duck = duckdb.sql(
        f"SELECT count(*) AS n, sum(octet_length(image)) AS png_bytes, min(states_dtype) AS dtype "
        f"FROM read_parquet('{rollouts}/*.parquet')"
    ).fetchall()[0]
    by_boundary = duckdb.sql(
        f"SELECT boundary, count(*), avg(score) FROM read_parquet('{rewards}/*.parquet') "
        "GROUP BY boundary ORDER BY boundary"
    ).fetchall()
    print(json.dumps({
        "rows": table.num_rows, "columns": table.column_names, "first_state": first.ravel()[:4].tolist(),
        "shape": list(first.shape), "duck": list(duck), "by_boundary": by_boundary,
        "meta": table.schema.metadata[b"tpgrpo.schema"].decode(),
        "tpgrpo_imported": any(m.startswith("tpgrpo") for m in sys.modules),
    }))
    """
)


def test_local_dataset_with_pyarrow_and_duckdb(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path), "plain")
    rows = samples.rollouts(10, dtype=torch.bfloat16)
    with DatasetWriter(layout.rollouts(0), "rollouts", max_part_rows=4) as writer:
        writer.write(rows)
    finalize_dataset(layout.rollouts(0), "rollouts", inputs={}, config_hash=CONFIG)
    write_dataset(layout.rewards(0, "shapes"), "rewards", samples.rewards(12), inputs={}, config_hash=CONFIG)

    out = subprocess.run(
        [sys.executable, "-c", PLAIN_READER, layout.rollouts(0), layout.rewards(0, "shapes")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    result = json.loads(out.stdout)
    assert result["tpgrpo_imported"] is False
    assert result["rows"] == 10 and "states" in result["columns"] and result["meta"] == "rollouts"
    expected = torch.frombuffer(bytearray(rows["states"][0]), dtype=torch.bfloat16).float()[:4].tolist()
    assert result["first_state"] == expected and result["shape"] == [5, *samples.LATENT]
    assert result["duck"] == [10, sum(len(b) for b in rows["image"]), "bfloat16"]
    assert [b[:2] for b in result["by_boundary"]] == [[0, 3], [1, 3], [2, 3], [3, 3]]


@pytest.mark.s3
def test_s3_dataset_with_plain_pyarrow_and_s3fs(s3_bucket: S3Bucket) -> None:
    import pyarrow.dataset as ds
    import s3fs

    layout = RunLayout(s3_bucket.root, "plain", storage_options=s3_bucket.storage_options)
    manifest = write_dataset(layout.rewards(0, "shapes"), "rewards", samples.rewards(12), inputs={},
                             config_hash=CONFIG, storage_options=s3_bucket.storage_options)  # fmt: skip
    # what a user does without tpgrpo: s3fs + pyarrow dataset discovery on the prefix
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    path = layout.rewards(0, "shapes").removeprefix("s3://")
    table = ds.dataset(path, format="parquet", filesystem=fs).to_table()
    assert table.num_rows == manifest.rows == 12
    assert sorted(table.column("score").to_pylist()) == sorted(samples.rewards(12)["score"])
    assert json.loads(fs.cat_file(f"{path}/_MANIFEST.json"))["rows"] == 12
