"""Tensors as Parquet values: raw bytes + dtype string + shape.

A tensor is stored as its contiguous little-endian bytes (`large_binary`), the dtype name as
torch spells it without the `torch.` prefix (`"float32"`, `"float16"`, `"bfloat16"`, …) and the
shape (`list<int32>`). The round trip is bit-exact for every supported dtype, bf16 included (its
bytes are copied, never converted). Readers without torch can decode float32/float16 with
`numpy.frombuffer(data, dtype).reshape(shape)`; bfloat16 values are the upper 16 bits of a
float32 (`(uint16 << 16).view(float32)`).

torch is imported inside the functions so that importing `tpgrpo.schemas` stays cheap.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tpgrpo.errors import DataError

if TYPE_CHECKING:
    import torch

# bytes per element of every dtype we store
ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


def _check_little_endian() -> None:
    if sys.byteorder != "little":
        raise RuntimeError("tensor blobs are little-endian; big-endian hosts are not supported")


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    if name not in ITEMSIZE:
        raise DataError(f"unsupported tensor dtype {name!r}; stored dtypes are {sorted(ITEMSIZE)}")
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype)
    return dtype


def encode_tensor(tensor: torch.Tensor) -> tuple[bytes, str, list[int]]:
    """Encodes a tensor as raw bytes, dtype name and shape.

    Args:
        tensor (`torch.Tensor`): any device, layout or stride; copied to contiguous CPU memory.

    Returns:
        `tuple[bytes, str, list[int]]`: payload, dtype name (e.g. `"bfloat16"`) and shape.
    """
    import torch

    _check_little_endian()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise ValueError(f"cannot store tensors of dtype {tensor.dtype}; supported: {sorted(ITEMSIZE)}")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)  # [N]
    if flat.numel() == 0:
        return b"", name, [int(d) for d in tensor.shape]
    payload = flat.view(torch.uint8).numpy().tobytes()  # [N * itemsize] bytes, no value conversion
    return payload, name, [int(d) for d in tensor.shape]


def decode_tensor(data: bytes | bytearray | memoryview, dtype: str, shape: Sequence[int]) -> torch.Tensor:
    """Decodes a tensor stored by `encode_tensor`.

    Args:
        data (`bytes`): the payload.
        dtype (`str`): dtype name, e.g. `"float32"`.
        shape (`Sequence[int]`): the tensor's shape.

    Returns:
        `torch.Tensor`: a new CPU tensor of that dtype and shape (owning its memory).

    Raises:
        `DataError`: unknown dtype or payload size not matching dtype and shape.
    """
    import torch

    _check_little_endian()
    torch_dtype = _torch_dtype(dtype)
    shape = [int(d) for d in shape]
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if len(data) != expected:
        raise DataError(
            f"tensor payload has {len(data)} bytes, expected {expected} for {dtype} {shape}: corrupted data"
        )
    if expected == 0:
        return torch.empty(shape, dtype=torch_dtype)
    raw = np.frombuffer(data, dtype=np.uint8).copy()  # [expected] bytes, writable
    return torch.from_numpy(raw).view(torch_dtype).reshape(shape)


def decode_tensor_column(data: pa.Table | pa.RecordBatch, name: str) -> torch.Tensor:
    """Decodes a tensor column of equal-shaped tensors into one stacked tensor, in one copy.

    Args:
        data (`pa.Table` or `pa.RecordBatch`): rows holding `name`, `name_dtype`, `name_shape`.
        name (`str`): the payload column, e.g. `"states"`.

    Returns:
        `torch.Tensor`: `[N, *shape]`, N the number of rows.

    Raises:
        `DataError`: a payload is null (never recorded, or dropped by retention), or the rows
            differ in dtype or shape.
    """
    import torch

    _check_little_endian()
    payload = data.column(name)
    if isinstance(payload, pa.ChunkedArray):
        payload = payload.combine_chunks()
    if payload.null_count:
        raise DataError(
            f"column {name!r} has {payload.null_count} null tensor(s): never recorded, or dropped by "
            "retention (see the dataset manifest's 'retention' entry)"
        )
    dtypes = set(data.column(f"{name}_dtype").to_pylist())
    shapes = {tuple(s) for s in data.column(f"{name}_shape").to_pylist()}
    if len(payload) == 0:
        return torch.empty((0,), dtype=torch.float32)
    if len(dtypes) != 1 or len(shapes) != 1:
        raise DataError(
            f"column {name!r} mixes dtypes {sorted(dtypes)} / shapes {sorted(shapes)}; decode rows one by one"
        )
    (dtype,) = dtypes
    (shape,) = shapes
    torch_dtype = _torch_dtype(dtype)
    row_bytes = math.prod(shape) * ITEMSIZE[dtype]
    offset_type = np.int64 if pa.types.is_large_binary(payload.type) else np.int32
    _, offsets_buf, data_buf = payload.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[
        payload.offset : payload.offset + len(payload) + 1
    ]
    if not np.all(np.diff(offsets) == row_bytes):
        raise DataError(f"column {name!r} has payloads whose size does not match {dtype} {list(shape)}")
    start, end = int(offsets[0]), int(offsets[-1])
    if row_bytes == 0:
        return torch.empty((len(payload), *shape), dtype=torch_dtype)
    raw = np.frombuffer(data_buf, dtype=np.uint8)[start:end].copy()  # [N * row_bytes], one copy
    return torch.from_numpy(raw).view(torch_dtype).reshape(len(payload), *shape)
