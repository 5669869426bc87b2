"""Casting to the declared schema on write: raise, don't correct."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tpgrpo.errors import DataError
from tpgrpo.schemas import schema_for
from tpgrpo.storage.conform import conform

from .samples import rewards


def test_mapping_is_cast_to_declared_types_and_order() -> None:
    rows = rewards(5)
    shuffled = {k: rows[k] for k in reversed(list(rows))}
    table = conform(shuffled, schema_for("rewards"))
    assert table.schema.equals(schema_for("rewards"), check_metadata=True)
    assert table.column("iteration").type == pa.int32()


def test_table_with_wider_types_is_cast_safely() -> None:
    table = pa.table(rewards(3)).cast(
        pa.schema([pa.field(n, pa.int64() if n in ("iteration", "boundary") else t) for n, t in
                   zip(pa.table(rewards(3)).column_names, pa.table(rewards(3)).schema.types, strict=True)])
    )  # fmt: skip
    out = conform(table, schema_for("rewards"))
    assert out.column("boundary").type == pa.int32()
    too_big = pa.table({**rewards(1), "iteration": pa.array([2**40], pa.int64())})
    with pytest.raises(DataError, match="'iteration' cannot be stored as int32"):
        conform(too_big, schema_for("rewards"))


def test_missing_nullable_columns_become_null() -> None:
    rows = rewards(4)
    del rows["reward_model"], rows["strict"]
    table = conform(rows, schema_for("rewards"))
    assert table.column("reward_model").null_count == 4


def test_refuses_missing_unknown_and_null_required_columns() -> None:
    rows = rewards(2)
    with pytest.raises(
        DataError, match=r"unknown column\(s\) \['extra'\].*missing required column\(s\) \['score'\]"
    ):
        conform({**{k: v for k, v in rows.items() if k != "score"}, "extra": [1, 2]}, schema_for("rewards"))
    with pytest.raises(DataError, match="required column 'score' has 1 null"):
        conform({**rows, "score": [1.0, None]}, schema_for("rewards"))
    with pytest.raises(DataError, match="unequal lengths"):
        conform({**rows, "score": [1.0]}, schema_for("rewards"))
    with pytest.raises(DataError, match="'trajectory_id' cannot be stored"):
        conform({**rows, "trajectory_id": ["a", "b"]}, schema_for("rewards"))
