"""The detector: pixel classes, shape features, quality figures."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.rewards.shapes_detector import (
    BG_CLASS,
    COLOR_TOLERANCE,
    STRAY_CLASS,
    classify_pixels,
    detect,
    quality,
    shape_of,
)
from tpgrpo.world.palette import BACKGROUND, COLORS
from tpgrpo.world.scenes import Scene, SceneObject, render, render_batch, sample_batch

BG = np.array(BACKGROUND, dtype=np.float64)


def _classes(colors: list[tuple[float, float, float]]) -> list[int]:
    px = np.clip(np.rint(np.array(colors)), 0, 255).astype(np.uint8)[None, None]  # [1, 1, P, 3]
    return classify_pixels(px)[0, 0].tolist()


def test_palette_background_and_blends() -> None:
    assert _classes([BACKGROUND, *COLORS.values()]) == list(range(len(COLORS) + 1))
    for k, c in enumerate(COLORS.values(), start=1):
        d = np.array(c) - BG
        # 65 % colour joins the colour, 35 % is neither colour nor background
        assert _classes([tuple(BG + 0.65 * d), tuple(BG + 0.35 * d)]) == [k, STRAY_CLASS]
    assert _classes([(0, 0, 0), (255, 255, 255), (128, 128, 128)]) == [STRAY_CLASS, BG_CLASS, STRAY_CLASS]


def test_table_matches_the_rule_at_cell_centres() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(0, 64, (5000, 3))
    centres = q * 4 + 1.5  # the rule is judged at the centre of each 4x4x4 cell
    d = np.array(list(COLORS.values()), dtype=np.float64) - BG  # [K, 3]
    x = centres - BG
    a = x @ d.T / (d * d).sum(1)  # [P, K]
    dist = np.linalg.norm(x[:, None] - np.minimum(a, 1.3)[..., None] * d[None], axis=-1)
    dist[a < 0.5] = np.inf
    expected = np.where(dist.min(1) <= COLOR_TOLERANCE, dist.argmin(1) + 1, STRAY_CLASS)
    expected[np.linalg.norm(x, axis=1) <= 60] = BG_CLASS
    got = classify_pixels((q * 4).astype(np.uint8)[None, None])[0, 0]
    assert np.array_equal(got, expected)


def test_shape_of_hand_cases() -> None:
    fill = np.array([1.0, 0.79, 0.52, 0.52, 0.95, 0.3, 1.0])
    offset = np.array([0.0, 0.0, 0.14, -0.14, 0.0, 0.0, 0.0])
    aspect = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    # square, circle, upright triangle, upside-down "triangle" (blob), square, blob, long bar (blob)
    assert shape_of(fill, offset, aspect).tolist() == [1, 0, 2, -1, 1, -1, -1]


def test_quality_is_zero_on_clean_renders() -> None:
    images, _ = sample_batch(np.random.default_rng(1), 500)
    q = quality(images)
    assert set(q) == {"background_dev", "stray_frac", "specks"}
    assert all(v.shape == (500,) for v in q.values())
    assert q["background_dev"].max() == 0 and q["stray_frac"].max() == 0 and q["specks"].max() == 0


def test_quality_counts_specks_tint_and_noise() -> None:
    img = render(Scene([SceneObject("circle", "red", (32.0, 32.0), 16)]))[None].copy()
    specks = [(3, 3), (3, 60), (60, 3), (60, 60), (10, 50)]
    for y, x in specks:
        img[0, y, x] = COLORS["blue"]
    img[0, 50:52, 20:22] = (0, 0, 0)  # a 2x2 dark speck
    q = quality(img)
    assert q["specks"][0] == 6
    assert q["stray_frac"][0] == pytest.approx((5 + 4) / 64**2)
    tinted = render(Scene([SceneObject("square", "green", (32.0, 32.0), 16)]))[None].astype(np.int16) - 12
    q = quality(np.clip(tinted, 0, 255).astype(np.uint8))
    assert q["background_dev"][0] == pytest.approx(12 / 255)  # every pixel outside the object is 12 off
    assert q["stray_frac"][0] == 0 and q["specks"][0] == 0
    rng = np.random.default_rng(2)
    noisy, _ = sample_batch(rng, 50)
    noisy = np.clip(noisy + rng.normal(0, 40, noisy.shape), 0, 255).astype(np.uint8)
    q = quality(noisy)
    assert q["background_dev"].min() > 0.05 and q["stray_frac"].min() > 0.1 and q["specks"].min() > 10


def test_detections_layout_and_empty_batches() -> None:
    scenes = [Scene([]), Scene([SceneObject("square", "yellow", (20.0, 20.0), 14)]), Scene([])]
    det = detect(render_batch(scenes))
    assert det.n_images == 3 and det.image.tolist() == [1] and det.shape.tolist() == [1]
    assert det.area.tolist() == [196.0] and det.centroid.tolist() == [[20.0, 20.0]]
    empty = detect(np.zeros((0, 64, 64, 3), dtype=np.uint8))
    assert empty.n_images == 0 and empty.image.size == 0 and empty.specks.shape == (0,)
