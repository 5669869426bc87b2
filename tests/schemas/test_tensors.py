"""Tensor codec: bit-exact round trips for float32 / float16 / bfloat16 and stacked decoding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tpgrpo.errors import DataError
from tpgrpo.schemas import decode_tensor, decode_tensor_column, encode_tensor

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit patterns, so NaN payloads and -0.0 compare exactly."""
    return t.contiguous().view(
        {4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.uint8}[t.element_size()]
    )


def _specials(dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    values = [0.0, -0.0, 1.0, -1.5, info.max, info.min, info.tiny, info.tiny / 4, float("inf"), float("-inf")]
    t = torch.tensor(values, dtype=torch.float32).to(dtype)
    return torch.cat([t, torch.full((1,), float("nan"), dtype=dtype)])


@pytest.mark.parametrize("dtype", FLOATS)
def test_round_trip_is_bit_exact_including_specials(dtype: torch.dtype) -> None:
    original = torch.cat([_specials(dtype), torch.randn(1000).to(dtype)]).reshape(3, 337)
    data, name, shape = encode_tensor(original)
    assert name == str(dtype).removeprefix("torch.")
    assert shape == [3, 337]
    assert len(data) == original.numel() * original.element_size()
    decoded = decode_tensor(data, name, shape)
    assert decoded.dtype == dtype
    assert torch.equal(_bits(decoded), _bits(original))


@settings(max_examples=40, deadline=None)
@given(
    dims=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from([*FLOATS, torch.int64, torch.uint8, torch.bool]),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_any_shape(dims: list[int], dtype: torch.dtype, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    original = (torch.randn(dims, generator=generator) * 100).to(dtype)
    decoded = decode_tensor(*encode_tensor(original))
    assert decoded.shape == original.shape and decoded.dtype == dtype
    assert torch.equal(_bits(decoded), _bits(original))


def test_non_contiguous_input_is_stored_in_logical_order() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    view = base.t()[1:, ::2]  # [5, 2], strided
    assert torch.equal(decode_tensor(*encode_tensor(view)), view)


def test_numpy_reads_payloads_without_torch() -> None:
    t32 = torch.randn(2, 3)
    data, _, shape = encode_tensor(t32)
    assert np.array_equal(np.frombuffer(data, np.float32).reshape(shape), t32.numpy())
    tb = torch.randn(2, 3).to(torch.bfloat16)
    data, _, shape = encode_tensor(tb)
    # bf16 is the upper half of a float32: widen the uint16 pattern by 16 bits
    widened = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    assert np.array_equal(widened, tb.float().numpy())


def test_decode_refuses_wrong_size_and_unknown_dtype() -> None:
    data, name, shape = encode_tensor(torch.zeros(2, 3))
    with pytest.raises(DataError, match="expected 24"):
        decode_tensor(data[:-1], name, shape)
    with pytest.raises(DataError, match="unsupported tensor dtype 'complex64'"):
        decode_tensor(data, "complex64", shape)


def test_encode_refuses_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="complex64"):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))


def _column_table(tensors: list[torch.Tensor | None]) -> pa.Table:
    encoded = [encode_tensor(t) if t is not None else (None, "float32", [1]) for t in tensors]
    return pa.table(
        {
            "states": pa.array([e[0] for e in encoded], pa.large_binary()),
            "states_dtype": [e[1] for e in encoded],
            "states_shape": pa.array([e[2] for e in encoded], pa.list_(pa.int32())),
        }
    )


@pytest.mark.parametrize("dtype", FLOATS)
def test_decode_column_stacks_rows(dtype: torch.dtype) -> None:
    tensors = [torch.randn(3, 2, 4).to(dtype) for _ in range(5)]
    table = _column_table(list(tensors))
    stacked = decode_tensor_column(table, "states")  # [5, 3, 2, 4]
    assert stacked.shape == (5, 3, 2, 4)
    assert torch.equal(_bits(stacked), _bits(torch.stack(tensors)))
    sliced = decode_tensor_column(table.slice(2, 2), "states")  # offsets of a slice start mid-buffer
    assert torch.equal(_bits(sliced), _bits(torch.stack(tensors[2:4])))


def test_decode_column_refuses_nulls_and_mixed_shapes() -> None:
    with pytest.raises(DataError, match="retention"):
        decode_tensor_column(_column_table([torch.zeros(2), None]), "states")
    with pytest.raises(DataError, match="mixes"):
        decode_tensor_column(_column_table([torch.zeros(2), torch.zeros(3)]), "states")
