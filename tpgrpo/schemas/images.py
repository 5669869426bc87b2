"""Images as Parquet values: PNG bytes of an RGB `uint8` array.

PNG is lossless, so a stored image scores exactly like the one the stage decoded. Encoding uses
zlib level 1 by default: several times faster than level 6 on 512 px images for a few percent
more bytes (the latents dominate a run's size anyway).
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt

from tpgrpo.errors import DataError


def encode_png(image: npt.NDArray[np.uint8], *, compress_level: int = 1) -> bytes:
    """Encodes an RGB image as PNG.

    Args:
        image (`np.ndarray`): `uint8`, `[H, W, 3]`.
        compress_level (`int`, defaults to 1): zlib level 0–9 (any level decodes identically).

    Returns:
        `bytes`: the PNG file.
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_png expects a uint8 [H, W, 3] array, got {image.dtype} {list(image.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def decode_png(data: bytes) -> npt.NDArray[np.uint8]:
    """Decodes a PNG written by `encode_png`.

    Args:
        data (`bytes`): the PNG file.

    Returns:
        `np.ndarray`: `uint8`, `[H, W, 3]`.

    Raises:
        `DataError`: the bytes are not a PNG or not an RGB image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.mode != "RGB":
                raise DataError(f"expected an RGB PNG, got {image.format} {image.mode}")
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image bytes are not a readable PNG: {error}") from error
