"""The JSON wire format of the remote reward protocol (`http` client, `server`).

    POST /score   {"prompts": [str, ...], "images": [base64 PNG, ...]}
             →    {"scores": [number, ...], "strict": [bool, ...] | null,
                   "details": [object, ...] | null, "key": str, "version": str}
    GET  /health  →  {"status": "ok", "key": str, "version": str}
    errors        →  {"error": str} with HTTP 400 (bad request), 404, 413 (too large),
                     500 (the reward failed), 503 (busy)

Images are RGB PNGs (8 bits per channel), base64 (standard alphabet, padded). JSON numbers must
be finite: the non-standard `NaN` / `Infinity` tokens are rejected on both sides. Nothing is ever
pickled.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards.base import RewardResult

__all__ = ["decode_images", "encode_image", "loads_strict", "parse_scores"]


def encode_image(image: np.ndarray) -> str:
    """Base64 PNG of one image.

    Args:
        image (`np.ndarray` uint8 `[H, W, 3]`): an RGB image.
    """
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # lossless at any level
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_images(items: Sequence[object], max_pixels: int) -> np.ndarray:
    """Decode base64 PNG strings into one batch.

    Args:
        items (`Sequence`): base64 strings, all images of the same size.
        max_pixels (`int`): the largest `H·W` accepted (checked from the PNG header, before the
            pixels are decompressed: a small PNG can inflate to gigabytes).

    Returns:
        `np.ndarray` uint8 `[N, H, W, 3]` (grey or RGBA images are converted to RGB).

    Raises:
        `UserError`: not a string, not base64, not a PNG, too many pixels, or mixed sizes.
    """
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise UserError(f"images[{i}] must be a base64 PNG string, got {type(item).__name__}")
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as e:
            raise UserError(f"images[{i}] is not valid base64 ({e})") from e
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise UserError(f"images[{i}] has {w}×{h} pixels, more than the limit {max_pixels}")
                arrays.append(np.asarray(im.convert("RGB")))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:  # corrupt
            raise UserError(f"images[{i}] is not a readable PNG ({e})") from e
        if arrays[-1].shape != arrays[0].shape:
            raise UserError(
                f"images[{i}] is {arrays[-1].shape[:2]}, images[0] {arrays[0].shape[:2]}: one size per batch"
            )
    if not arrays:
        return np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return np.stack(arrays)  # [N, H, W, 3]


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-finite JSON number {token}")


def _finite_number(value: object) -> bool:
    """A JSON number (not a boolean) that is finite as a float64."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond float64
        return False


def loads_strict(body: bytes | str) -> Any:
    """`json.loads` that rejects `NaN`, `Infinity` and `-Infinity` (raises `ValueError`)."""
    return json.loads(body, parse_constant=_reject_constant)


def parse_scores(body: bytes, n: int, source: str) -> tuple[RewardResult, dict[str, Any]]:
    """Validate a `/score` answer for `n` images.

    Args:
        body (`bytes`): the response body.
        n (`int`): images sent.
        source (`str`): where it came from, for messages (the URL).

    Returns:
        `(RewardResult, meta)`: the scores and the answer's `key` / `version` (those present).

    Raises:
        `RewardError`: not JSON, not an object, missing or wrong-length `scores`, a score that is
            not a finite number, `strict` not booleans, `details` not objects.
    """
    try:
        data = loads_strict(body)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError and NaN tokens
        raise RewardError(f"reward server {source} answered malformed JSON ({e}): {body[:120]!r}") from e
    if not isinstance(data, dict):
        raise RewardError(f"reward server {source} answered {type(data).__name__}, not a JSON object")
    scores = data.get("scores")
    if not isinstance(scores, list) or len(scores) != n:
        got = f"{len(scores)} scores" if isinstance(scores, list) else f"scores={scores!r:.60}"
        raise RewardError(f"reward server {source} answered {got} for {n} images")
    for i, s in enumerate(scores):
        if not _finite_number(s):
            raise RewardError(f"reward server {source}: scores[{i}] = {s!r:.40} is not a finite number")
    strict = data.get("strict")
    if strict is not None and (
        not isinstance(strict, list) or len(strict) != n or not all(isinstance(v, bool) for v in strict)
    ):
        raise RewardError(
            f"reward server {source}: 'strict' must be null or {n} booleans, got {strict!r:.80}"
        )
    details = data.get("details")
    if details is None:
        details = [{} for _ in range(n)]
    elif not isinstance(details, list) or len(details) != n or not all(isinstance(d, dict) for d in details):
        raise RewardError(
            f"reward server {source}: 'details' must be null or {n} objects, got {details!r:.80}"
        )
    meta = {k: data[k] for k in ("key", "version") if isinstance(data.get(k), str)}
    score = np.array(scores, dtype=np.float64)  # [N]
    return RewardResult(score, None if strict is None else np.array(strict, dtype=bool), details), meta
