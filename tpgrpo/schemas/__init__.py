"""Dataset schemas: one declared, named and versioned pyarrow schema per dataset.

This package is the only place dataset columns are named. Each module documents its columns;
`SCHEMAS` maps a dataset name to its schema, `schema_for` looks one up. Tensors are stored as
bytes + dtype + shape (`tensors`), images as PNG bytes (`images`).
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
]
