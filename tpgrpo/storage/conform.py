"""Casting data to a declared schema on write (schemas are declared, never inferred).

Rules: every non-nullable column must be present and free of nulls; a nullable column may be left
out and is then written as nulls; a column the schema does not declare is an error; values are
cast to the declared type with overflow and truncation checks. Column order follows the schema.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import pyarrow as pa

from tpgrpo.errors import DataError
from tpgrpo.schemas import SchemaRef

Data: TypeAlias = pa.Table | pa.RecordBatch | Mapping[str, Sequence[Any] | pa.Array | pa.ChunkedArray]


def _column(values: Any, f: pa.Field, ref: SchemaRef) -> pa.Array | pa.ChunkedArray:
    try:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            return values if values.type == f.type else values.cast(f.type, safe=True)
        return pa.array(values, type=f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as error:
        raise DataError(f"{ref}: column {f.name!r} cannot be stored as {f.type}: {error}") from error


def conform(data: Data, schema: pa.Schema) -> pa.Table:
    """Casts a table, record batch or column mapping to `schema`.

    Args:
        data (`pa.Table`, `pa.RecordBatch` or `Mapping[str, Sequence]`): the rows to write; a
            mapping's values may be Python sequences, numpy arrays or Arrow arrays.
        schema (`pa.Schema`): the declared schema.

    Returns:
        `pa.Table`: exactly `schema` (metadata included).

    Raises:
        `DataError`: missing required or unknown columns, nulls in a required column, values not
            castable to the declared type, columns of unequal length.
    """
    ref = SchemaRef.of(schema)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    columns: Mapping[str, Any] = (
        {name: data.column(name) for name in data.column_names} if isinstance(data, pa.Table) else data
    )
    unknown = sorted(set(columns) - set(schema.names))
    missing = [f.name for f in schema if f.name not in columns and not f.nullable]
    if unknown or missing:
        raise DataError(f"{ref}: unknown column(s) {unknown}, missing required column(s) {missing}")
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{ref}: columns have unequal lengths {lengths}")
    num_rows = next(iter(lengths.values()), 0)
    arrays = []
    for f in schema:
        if f.name not in columns:
            arrays.append(pa.nulls(num_rows, type=f.type))
            continue
        array = _column(columns[f.name], f, ref)
        if not f.nullable and array.null_count:
            raise DataError(f"{ref}: required column {f.name!r} has {array.null_count} null value(s)")
        arrays.append(array)
    chunked = [a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a], type=a.type) for a in arrays]
    return pa.Table.from_arrays(chunked, schema=schema)
