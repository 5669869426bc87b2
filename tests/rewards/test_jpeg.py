"""The `jpeg` rewards: the size formula against a direct encoding, ordering, determinism, validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tpgrpo.errors import UserError
from tpgrpo.rewards import make_reward


def _images() -> np.ndarray:
    """[3, 64, 64, 3]: flat grey, a smooth gradient, uniform noise (increasingly incompressible)."""
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    ramp = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 64, 3)).copy()
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return np.stack([flat, ramp, noise])


def test_score_is_minus_kilobytes_of_the_quality_95_jpeg() -> None:
    images = _images()
    res = make_reward("jpeg").score(images, ["a", "b", "c"])
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)  # DDPO's encoding
        assert res.details[i] == {"jpeg_bytes": buffer.tell()}
        assert res.score[i] == -buffer.tell() / 1000
    assert res.strict is None
    assert res.score[0] > res.score[1] > res.score[2]  # flat beats gradient beats noise


def test_scale_quality_and_incompressibility() -> None:
    images, prompts = _images(), ["p"] * 3
    base = make_reward("jpeg").score(images, prompts).score
    flow = make_reward({"name": "jpeg", "scale": 500}).score(images, prompts).score  # Flow-GRPO's /500
    np.testing.assert_allclose(flow, base / 500)
    inc = make_reward("jpeg_incompressibility")
    assert inc.key == "jpeg_incompressibility"
    np.testing.assert_array_equal(inc.score(images, prompts).score, -base)
    low = make_reward({"name": "jpeg", "quality": 30}).score(images, prompts).score
    assert (low >= base).all() and (low[1:] > base[1:]).all()  # smaller files (a flat image is all header)
    assert make_reward({"name": "jpeg", "quality": 30}).version != make_reward("jpeg").version


def test_deterministic_and_independent_of_batch_order() -> None:
    images, reward = _images(), make_reward("jpeg")
    first = reward.score(images, ["p"] * 3).score
    np.testing.assert_array_equal(reward.score(images, ["p"] * 3).score, first)
    np.testing.assert_array_equal(reward.score(images[::-1].copy(), ["p"] * 3).score, first[::-1])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"quality": 0}, "quality must be an integer in 1 … 95"),
        ({"quality": 100}, "quality must be"),
        ({"quality": 9.5}, "quality must be"),
        ({"scale": 0}, "scale must be a positive finite number"),
        ({"scale": float("nan")}, "scale must be"),
        ({"scale": float("inf")}, "scale must be"),
    ],
)
def test_bad_parameters(params: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_reward({"name": "jpeg", **params})


def test_bad_batch() -> None:
    with pytest.raises(UserError, match="one prompt per image"):
        make_reward("jpeg").score(_images(), ["only one"])
