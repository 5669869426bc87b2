"""Dataset schemas: one declared, named and versioned pyarrow schema per dataset.

This package is the only place dataset columns are named. Each module documents its columns;
`SCHEMAS` maps a dataset name to its schema, `schema_for` looks one up. Tensors are stored as
bytes + dtype + shape (`tensors`), images as PNG bytes (`images`).

Versions: a change of columns bumps a schema's version. When the change only adds nullable columns,
the module lists its older schemas in `READABLE` (version -> schema): datasets of those versions
stay finished and readable (readers get the current schema, the added columns null; `upgrade`), so
stored runs keep loading, resuming and verifying. Any other change makes older datasets stale.
"""

from __future__ import annotations

import pyarrow as pa

# `import … as` because `annotations` is also the name `from __future__` binds in this namespace
import tpgrpo.schemas.annotations as _annotations
import tpgrpo.schemas.branches as _branches
import tpgrpo.schemas.eval as _eval
import tpgrpo.schemas.prompts as _prompts
import tpgrpo.schemas.rewards as _rewards
import tpgrpo.schemas.rollouts as _rollouts
import tpgrpo.schemas.updates as _updates
from tpgrpo.errors import UserError
from tpgrpo.schemas.images import decode_png, encode_png
from tpgrpo.schemas.registry import SCHEMA_NAME_KEY, SCHEMA_VERSION_KEY, SchemaRef, declare
from tpgrpo.schemas.tensors import decode_tensor, decode_tensor_column, encode_tensor

SCHEMAS: dict[str, pa.Schema] = {
    module.NAME: module.SCHEMA
    for module in (_prompts, _rollouts, _branches, _rewards, _annotations, _updates, _eval)
}


READABLE: dict[str, dict[int, pa.Schema]] = {
    module.NAME: dict(getattr(module, "READABLE", {}))
    for module in (_prompts, _rollouts, _branches, _rewards, _annotations, _updates, _eval)
}
"""Dataset name -> older versions still read (see the module docstring)."""


def stored_schema(ref: SchemaRef) -> pa.Schema | None:
    """The schema a stored dataset of `ref` (name and version) was written with, if this code reads it:
    the current schema, or an older one of `READABLE`; None otherwise."""
    current = SCHEMAS.get(ref.name)
    if current is not None and SchemaRef.of(current) == ref:
        return current
    return READABLE.get(ref.name, {}).get(ref.version)


def upgrade(data: pa.Table, name: str, columns: list[str] | None = None) -> pa.Table:
    """Rows read from an older readable version as the current schema (or its `columns`): the columns
    the old version lacks (all nullable, see `READABLE`) are added as nulls, in schema order."""
    current = schema_for(name)
    target = (
        current
        if columns is None
        else pa.schema([current.field(c) for c in columns], metadata=current.metadata)
    )
    if data.schema.equals(target, check_metadata=False):
        return data.replace_schema_metadata(target.metadata)
    arrays = [
        data.column(f.name) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
        for f in target
    ]
    return pa.Table.from_arrays(arrays, schema=target)


def schema_for(name: str) -> pa.Schema:
    """Looks up the declared schema of a dataset.

    Args:
        name (`str`): dataset name, one of `SCHEMAS`.

    Returns:
        `pa.Schema`: the schema, with name and version in its metadata.

    Raises:
        `UserError`: unknown name (the message lists the known ones).
    """
    try:
        return SCHEMAS[name]
    except KeyError:
        raise UserError(f"unknown dataset schema {name!r}; known: {', '.join(sorted(SCHEMAS))}") from None


__all__ = [
    "READABLE",
    "SCHEMAS",
    "SCHEMA_NAME_KEY",
    "SCHEMA_VERSION_KEY",
    "SchemaRef",
    "declare",
    "decode_png",
    "decode_tensor",
    "decode_tensor_column",
    "encode_png",
    "encode_tensor",
    "schema_for",
    "stored_schema",
    "upgrade",
]
