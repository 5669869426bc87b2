"""The `weighted` reward: the sum by hand, joint strict verdicts, details, version, validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from tpgrpo.errors import UserError
from tpgrpo.rewards import REWARDS, RewardResult, make_reward
from tpgrpo.world.scenes import sample_batch


class ConstReward:
    """Scores every image `value`; strict verdicts `strict` (or none); for composition tests."""

    def __init__(self, value: float, strict: bool | None = None, key: str = "const") -> None:
        self.value, self.strict, self.key, self.version = value, strict, key, f"c{value}"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        n = len(images)
        verdict = None if self.strict is None else np.full(n, self.strict)
        return RewardResult(np.full(n, self.value), verdict, [{"v": self.value}] * n)


@pytest.fixture(autouse=True)
def const(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REWARDS, "const", ConstReward)


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, list[str]]:
    images, prompts = sample_batch(np.random.default_rng(0), 8)
    images[::2] = 255 - images[::2]  # half the images inverted: shapes scores differ
    return images, prompts


def test_weighted_sum_of_shapes_and_jpeg(batch: Any) -> None:
    images, prompts = batch
    spec = {
        "name": "weighted",
        "components": [
            {"spec": "shapes", "weight": 0.7},
            {"spec": {"name": "jpeg", "scale": 500}, "weight": 0.3},
        ],
    }
    reward = make_reward(spec)
    res = reward.score(images, prompts)
    shapes = make_reward("shapes").score(images, prompts)
    jpeg = make_reward({"name": "jpeg", "scale": 500}).score(images, prompts)
    np.testing.assert_allclose(res.score, 0.7 * shapes.score + 0.3 * jpeg.score, rtol=0, atol=1e-15)
    assert res.strict is None  # jpeg has no verdict
    assert reward.key == "weighted"
    assert reward.version.startswith("1:0.7*shapes@1+0.3*jpeg@1:q95:s500:")
    first = res.details[0]["components"]
    assert list(first) == ["shapes", "jpeg"]
    assert first["shapes"] == {
        "score": shapes.score[0],
        "weight": 0.7,
        "strict": bool(shapes.strict[0]),  # type: ignore[index]
        "details": shapes.details[0],
    }
    assert first["jpeg"] == {"score": jpeg.score[0], "weight": 0.3, "details": jpeg.details[0]}


def test_strict_is_the_and_of_all_verdicts(batch: Any) -> None:
    images, prompts = batch
    shapes = make_reward("shapes").score(images, prompts)
    assert shapes.strict is not None and 0 < shapes.strict.sum() < len(prompts)
    both = make_reward(
        {
            "name": "weighted",
            "key": "mix",
            "components": [
                {"spec": "shapes", "weight": 1},
                {"spec": {"name": "const", "value": 2.0, "strict": True}, "weight": -0.5},
            ],
        }
    )
    res = both.score(images, prompts)
    assert both.key == "mix"
    np.testing.assert_array_equal(res.score, shapes.score - 1.0)  # negative weights are allowed
    np.testing.assert_array_equal(res.strict, shapes.strict)
    never = make_reward(
        {
            "name": "weighted",
            "components": [
                {"spec": "shapes", "weight": 1},
                {"spec": {"name": "const", "value": 0, "strict": False}, "weight": 1},
            ],
        }
    )
    assert not never.score(images, prompts).strict.any()  # type: ignore[union-attr]


def test_version_changes_with_a_weight() -> None:
    def version(w: float) -> str:
        return make_reward({"name": "weighted", "components": [{"spec": "shapes", "weight": w}]}).version

    assert version(0.5) != version(0.6)
    assert version(0.5) == version(0.5)


@pytest.mark.parametrize(
    ("components", "match"),
    [
        ([], "components must be a non-empty list"),
        ("shapes", "components must be a non-empty list"),
        ({"spec": "shapes", "weight": 1}, "components must be a non-empty list"),
        ([{"spec": "shapes"}], r"components\[0\] must have exactly the keys 'spec' and 'weight'"),
        ([{"spec": "shapes", "weight": 1, "extra": 0}], r"components\[0\] must have exactly"),
        ([{"spec": "shapes", "weight": float("nan")}], r"components\[0\]\.weight must be a finite number"),
        ([{"spec": "shapes", "weight": float("inf")}], "must be a finite number"),
        ([{"spec": "shapes", "weight": "0.5"}], "must be a finite number, got '0.5'"),
        ([{"spec": "shapes", "weight": True}], "must be a finite number, got True"),
        ([{"spec": "shapes", "weight": 0}, {"spec": "jpeg", "weight": 0.0}], "all weights are 0"),
        (
            [{"spec": "shapes", "weight": 1}, {"spec": "nope", "weight": 1}],
            r"components\[1\]: unknown reward 'nope'",
        ),
        (
            [{"spec": "shapes", "weight": 1}, {"spec": "shapes", "weight": 1}],
            r"component keys \['shapes', 'shapes'\] repeat",
        ),
    ],
)
def test_bad_components(components: Any, match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_reward({"name": "weighted", "components": components})


def test_every_malformed_entry_is_reported_at_once() -> None:
    bad = [{"spec": "shapes", "weight": float("nan")}, {"weight": 1}]
    with pytest.raises(UserError, match=r"components\[0\]\.weight .*; components\[1\] must have"):
        make_reward({"name": "weighted", "components": bad})
