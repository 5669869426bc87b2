"""The `jpeg` and `jpeg_incompressibility` rewards: JPEG file size, as in DDPO and Flow-GRPO.

Each image is encoded with Pillow as a baseline JPEG at a fixed `quality` (default 95, DDPO's),
and its size is measured in kB (1 kB = 1000 bytes, DDPO's unit):

    size_kB = len(JPEG(image, quality)) / 1000
    jpeg                    score = −size_kB / scale      (compressibility)
    jpeg_incompressibility  score = +size_kB / scale

DDPO's `jpeg_compressibility` is `scale = 1` (the default); Flow-GRPO's divides by 500 (pass
`scale=500`). Encoding is deterministic for a given libjpeg build, whose version is part of the
reward's `version`. There is no strict verdict; `details` carries `{"jpeg_bytes": int}`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.rewards.base import RewardResult, check_batch

__all__ = ["JpegReward", "jpeg_compressibility", "jpeg_incompressibility", "jpeg_size"]


class JpegReward:
    """Signed JPEG size of each image (see the module docstring).

    Args:
        quality (`int`): JPEG quality, 1 … 95.
        scale (`float`): the size in kB is divided by it (> 0).
        incompressible (`bool`): reward large files (`+size`) instead of small ones (`−size`).
        key (`str`, *optional*): storage key; default `jpeg` / `jpeg_incompressibility`.

    Raises:
        `UserError`: quality outside 1 … 95 or a scale that is not a positive finite number.
    """

    def __init__(
        self, quality: int = 95, scale: float = 1.0, incompressible: bool = False, key: str | None = None
    ) -> None:
        from PIL import features

        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
            raise UserError(f"jpeg reward: quality must be an integer in 1 … 95, got {quality!r}")
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not (math.isfinite(scale) and scale > 0)
        ):
            raise UserError(f"jpeg reward: scale must be a positive finite number, got {scale!r}")
        self.quality = quality
        self.scale = float(scale)
        self.sign = 1.0 if incompressible else -1.0
        self.key = key or ("jpeg_incompressibility" if incompressible else "jpeg")
        self.version = f"1:q{quality}:s{self.scale:g}:{_jpeg_library(features)}"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score images by their JPEG size.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.
            prompts (`Sequence[str]`): `N` prompts (unused, checked for the count).

        Returns:
            `RewardResult`: `±size_kB / scale` `[N]`, no strict verdict, `{"jpeg_bytes"}` details.
        """
        check_batch(images, prompts)
        sizes = [jpeg_size(image, self.quality) for image in images]
        score = self.sign * np.array(sizes, dtype=np.float64) / 1000.0 / self.scale  # [N]
        return RewardResult(score=score, strict=None, details=[{"jpeg_bytes": s} for s in sizes])


def jpeg_size(image: np.ndarray, quality: int) -> int:
    """Bytes of the baseline JPEG of one image.

    Args:
        image (`np.ndarray` uint8 `[H, W, 3]`): an RGB image.
        quality (`int`): JPEG quality.
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.tell()


def _jpeg_library(features: Any) -> str:
    """`libjpeg-turbo-<version>` or `libjpeg-<version>`: the encoder that fixes the byte counts."""
    turbo = features.version("libjpeg_turbo")
    return f"libjpeg-turbo-{turbo}" if turbo else f"libjpeg-{features.version('jpg')}"


def jpeg_compressibility(quality: int = 95, scale: float = 1.0, key: str = "jpeg") -> JpegReward:
    """The `jpeg` reward: `−size_kB / scale` (smaller files score higher)."""
    return JpegReward(quality=quality, scale=scale, incompressible=False, key=key)


def jpeg_incompressibility(
    quality: int = 95, scale: float = 1.0, key: str = "jpeg_incompressibility"
) -> JpegReward:
    """The `jpeg_incompressibility` reward: `+size_kB / scale` (larger files score higher)."""
    return JpegReward(quality=quality, scale=scale, incompressible=True, key=key)
