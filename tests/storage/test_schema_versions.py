"""An older schema version that a newer one only extends with nullable columns stays readable.

`updates` v2 added the per-step diagnostics; a v1 dataset (what runs stored before wrote) reads as
v2 with those columns null, counts as finished (a resumed run skips it), and verifies. A version
this code does not know (newer, or older and not listed in `READABLE`) is still refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pytest

import tpgrpo.schemas as schemas
from tpgrpo.errors import DataError
from tpgrpo.schemas import READABLE, SchemaRef, declare, schema_for
from tpgrpo.schemas.updates import BY_STEP
from tpgrpo.storage import iter_batches, read_manifest, read_table, verify_dataset, write_dataset
from tpgrpo.storage.state import dataset_state, prepare_output

from . import samples

CONFIG = "c" * 64


@contextmanager
def written_as(name: str, schema: pa.Schema) -> Iterator[None]:
    """Writers use `schema` for `name` inside the block: what an older tpgrpo wrote."""
    saved = schemas.SCHEMAS[name]
    schemas.SCHEMAS[name] = schema
    try:
        yield
    finally:
        schemas.SCHEMAS[name] = saved


def _v1_updates(uri: str, n: int = 4) -> dict[str, list[object]]:
    rows = {k: v for k, v in samples.updates(n).items() if k not in BY_STEP}
    with written_as("updates", READABLE["updates"][1]):
        write_dataset(uri, "updates", rows, inputs={"rollouts": "h"}, config_hash=CONFIG)
    return rows


def test_updates_v1_is_declared_readable() -> None:
    v1, v2 = READABLE["updates"][1], schema_for("updates")
    assert SchemaRef.of(v1) == SchemaRef("updates", 1) and SchemaRef.of(v2) == SchemaRef("updates", 2)
    # v2 = v1 + the per-step list columns, all nullable (so v1 rows upgrade with nulls)
    assert v2.names == [*v1.names, *BY_STEP]
    assert all(v2.field(c).nullable and v2.field(c).type == pa.list_(pa.float64()) for c in BY_STEP)


def test_v1_dataset_reads_as_the_current_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "updates")
    rows = _v1_updates(uri)
    assert read_manifest(uri).schema == SchemaRef("updates", 1)
    table = read_table(uri, "updates")
    assert table.schema.equals(schema_for("updates"), check_metadata=True)
    assert table.column("loss").to_pylist() == rows["loss"]
    for c in BY_STEP:
        assert table.column(c).null_count == 4
    # selected columns, old and new mixed, in the order asked
    some = read_table(uri, "updates", columns=["grad_norm_by_step", "optimizer_step"])
    assert some.column_names == ["grad_norm_by_step", "optimizer_step"]
    assert some.column("optimizer_step").to_pylist() == [0, 1, 2, 3]
    assert some.column("grad_norm_by_step").to_pylist() == [None] * 4
    # streamed
    batches = list(iter_batches(uri, "updates", batch_size=3))
    assert sum(b.num_rows for b in batches) == 4
    assert all(b.schema.names == schema_for("updates").names for b in batches)


def test_v1_dataset_is_finished_and_verifies(tmp_path: Path) -> None:
    uri = str(tmp_path / "updates")
    _v1_updates(uri)
    inputs = {"rollouts": "h"}
    assert dataset_state(uri, inputs=inputs, config_hash=CONFIG, schema_name="updates") == "done"
    assert prepare_output(uri, inputs=inputs, config_hash=CONFIG, schema_name="updates") == "skip"
    assert verify_dataset(uri).schema == SchemaRef("updates", 1)


def test_v2_round_trip_keeps_the_lists(tmp_path: Path) -> None:
    uri = str(tmp_path / "updates")
    rows = samples.updates(3)
    write_dataset(uri, "updates", rows, inputs={}, config_hash=CONFIG)
    table = read_table(uri, "updates")
    assert table.column("grad_norm_by_step").to_pylist() == rows["grad_norm_by_step"]
    assert read_manifest(uri).schema == SchemaRef("updates", 2)


@pytest.mark.parametrize("version", [3, 7])
def test_unknown_versions_are_still_refused(tmp_path: Path, version: int) -> None:
    """A newer version (3), or one never declared readable: stale for a stage, refused by readers."""
    uri = str(tmp_path / "updates")
    newer = declare("updates", version, list(schema_for("updates")))
    with written_as("updates", newer):
        write_dataset(uri, "updates", samples.updates(2), inputs={}, config_hash=CONFIG)
    assert dataset_state(uri, inputs={}, config_hash=CONFIG, schema_name="updates") == "stale"
    with pytest.raises(DataError, match=f"v{version}, expected 'updates' v2"):
        read_table(uri, "updates")


def test_other_schemas_have_no_readable_versions() -> None:
    """Only a change that adds nullable columns may list older versions (none besides updates v1)."""
    assert {name: sorted(v) for name, v in READABLE.items() if v} == {"updates": [1]}
