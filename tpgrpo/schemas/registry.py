"""Naming and versioning of dataset schemas.

Every dataset schema carries its name and version in the Arrow schema metadata, under
`tpgrpo.schema` and `tpgrpo.schema_version`. Parquet files keep that metadata in their footer, so
any reader (pyarrow, DuckDB, pandas) can tell which contract a file follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from tpgrpo.errors import DataError

SCHEMA_NAME_KEY = b"tpgrpo.schema"
SCHEMA_VERSION_KEY = b"tpgrpo.schema_version"


@dataclass(frozen=True)
class SchemaRef:
    """The identity of a dataset schema.

    Args:
        name (`str`): dataset kind, e.g. `"rollouts"`.
        version (`int`): bumped on every change of the columns or their meaning.
    """

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name!r} v{self.version}"

    @classmethod
    def of(cls, schema: pa.Schema) -> SchemaRef:
        """Reads the name and version from a schema's metadata.

        Args:
            schema (`pa.Schema`): a schema declared by `declare` or read from a tpgrpo Parquet file.

        Returns:
            `SchemaRef`: its name and version.

        Raises:
            `DataError`: the metadata is missing or malformed (not a tpgrpo dataset).
        """
        metadata = schema.metadata or {}
        name = metadata.get(SCHEMA_NAME_KEY)
        version = metadata.get(SCHEMA_VERSION_KEY)
        if name is None or version is None or not version.isdigit():
            raise DataError(
                "schema carries no tpgrpo name/version metadata "
                f"({SCHEMA_NAME_KEY.decode()}, {SCHEMA_VERSION_KEY.decode()}): not a tpgrpo dataset"
            )
        return cls(name.decode(), int(version))


def declare(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    """Builds a dataset schema stamped with its name and version.

    Args:
        name (`str`): dataset kind.
        version (`int`): schema version, >= 1.
        fields (`list[pa.Field]`): the columns, in storage order.

    Returns:
        `pa.Schema`: the schema with `tpgrpo.schema` / `tpgrpo.schema_version` metadata.
    """
    if version < 1:
        raise ValueError(f"schema version must be >= 1, got {version}")
    metadata = {SCHEMA_NAME_KEY: name.encode(), SCHEMA_VERSION_KEY: str(version).encode()}
    return pa.schema(fields, metadata=metadata)


def tensor_fields(name: str, *, optional: bool) -> list[pa.Field]:
    """The three columns that store one tensor per row: payload, dtype and shape.

    The payload is `large_binary` (64-bit offsets) so that a batch of many SD3.5-size
    trajectories never overflows the 2 GiB limit of `binary`; readers see plain bytes either way.
    The payload is always nullable: retention (`tpgrpo.storage.retention`) nulls the payloads of
    old iterations and keeps their dtype and shape.

    Args:
        name (`str`): payload column name; the others are `<name>_dtype` and `<name>_shape`.
        optional (`bool`): whether the tensor may be absent altogether (all three columns null).

    Returns:
        `list[pa.Field]`: `[name, name_dtype, name_shape]`.
    """
    return [
        pa.field(name, pa.large_binary(), nullable=True),
        pa.field(f"{name}_dtype", pa.string(), nullable=optional),
        pa.field(f"{name}_shape", pa.list_(pa.int32()), nullable=optional),
    ]
