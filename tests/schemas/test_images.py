"""PNG codec: lossless round trip, strict inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.errors import DataError
from tpgrpo.schemas import decode_png, encode_png


@pytest.mark.parametrize("compress_level", [0, 1, 9])
def test_round_trip_is_exact(compress_level: int) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(17, 31, 3), dtype=np.uint8)
    data = encode_png(image, compress_level=compress_level)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = decode_png(data)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)],
    ids=["float", "gray", "rgba"],
)
def test_encode_refuses_non_rgb_uint8(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        encode_png(image)


def test_decode_refuses_garbage() -> None:
    with pytest.raises(DataError, match="not a readable PNG"):
        decode_png(b"definitely not a png")
