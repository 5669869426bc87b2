"""The `shapes_pref` reward: values by hand, hacks that must score low, density, determinism,
details like `shapes`', the reference server and weighted sums with `shapes`."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import requests
from scipy import ndimage

from tpgrpo.rewards import make_reward
from tpgrpo.rewards.server import serve
from tpgrpo.rewards.shapes import ShapesReward, requirement_plan
from tpgrpo.rewards.shapes_detector import CHUNK
from tpgrpo.rewards.shapes_pref import ShapesPrefReward, shape_likelihood
from tpgrpo.rewards.wire import encode_image
from tpgrpo.world.palette import BACKGROUND, COLORS
from tpgrpo.world.scenes import Scene, SceneObject, render, sample_batch

PREF = ShapesPrefReward()
SHAPES = ShapesReward()
RED, BG = np.array(COLORS["red"]), np.array(BACKGROUND)
# |red − background|² = 20² + 200² + 200² = 80 400: the squared length of red's segment
RED_SEG2 = 80_400.0


def _scene(*objs: tuple[str, str, float, float, int]) -> np.ndarray:
    """Render `(shape, colour, x, y, size)` objects into one image `[1, 64, 64, 3]`."""
    return render(Scene([SceneObject(s, c, (x, y), n) for s, c, x, y, n in objs]))[None]


def _blank() -> np.ndarray:
    img = np.empty((1, 64, 64, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    return img


def _red_square_16() -> np.ndarray:
    """A clean 16 px red square, pixels [24, 40) × [24, 40)."""
    return _scene(("square", "red", 32, 32, 16))


def test_ground_truth_scores_one() -> None:
    images, prompts = sample_batch(np.random.default_rng(0), 600)
    res = PREF.score(images, prompts)
    assert res.score.min() == pytest.approx(1.0, abs=1e-12)
    assert res.strict is not None and res.strict.all()


def test_content_by_hand() -> None:
    # two clean squares for "three squares": soft count 2 = 2 · p_square (p = 1 on ground truth),
    # count:square = 1 − |2 − 3| / 3 = 2/3; no extras; quality 1 → score 2/3 · (1 + 1) / 2
    two = _scene(("square", "red", 12, 12, 16), ("square", "blue", 40, 12, 16))
    res = PREF.score(two, ["a photo of three squares"])
    assert res.details[0]["requirements"] == {"count:square": pytest.approx(2 / 3, abs=1e-4)}
    assert res.score[0] == pytest.approx(2 / 3)
    # a circle asked for, a circle and an extra square drawn: present:circle 1, x = 2 − 1 = 1,
    # content 1 / (1 + 1) = 0.5, quality 1
    extra = _scene(("circle", "red", 14, 14, 16), ("square", "blue", 44, 44, 16))
    res = PREF.score(extra, ["a photo of a circle"])
    assert res.details[0]["extra"] == pytest.approx(1.0)
    assert res.score[0] == pytest.approx(0.5)
    assert SHAPES.score(extra, ["a photo of a circle"]).score[0] == 1.0  # shapes ignores extras


def test_shape_likelihood_by_hand() -> None:
    # a 16 × 12 red rectangle: fill 1, offset 0, aspect 4/3 (the detector still calls it a square),
    # p_square = exp(−½ ((4/3 − 1.08) / 0.3)²); the prompt's two requirements both get it, x = 0,
    # quality 1 (a clean render)
    img = _blank()
    img[0, 20:32, 24:40] = RED
    p = math.exp(-0.5 * ((4 / 3 - 1.08) / 0.3) ** 2)  # 0.700
    res = PREF.score(img, ["a photo of a red square"])
    assert res.details[0]["requirements"] == pytest.approx(
        {"present:square": p, "color:red square": p}, abs=1e-4
    )
    assert res.score[0] == pytest.approx(p)
    assert SHAPES.score(img, ["a photo of a red square"]).score[0] == 1.0
    # a 10 px square: side 4 px under the window, p = exp(−½ (4 / 4)²) = 0.607
    small = _blank()
    small[0, 20:30, 20:30] = RED
    assert PREF.score(small, ["a photo of a square"]).score[0] == pytest.approx(math.exp(-0.5))
    # the function itself: windows are flat, each feature adds its squared excess
    got = shape_likelihood(np.array([0.7]), np.array([0.05]), np.array([1.0]), np.array([22.5]))
    # circle: fill (0.77 − 0.7) / 0.1 = 0.7, offset (0.05 − 0.02) / 0.05 = 0.6, side 2.5 / 4 = 0.625
    assert got[0, 0] == pytest.approx(math.exp(-0.5 * (0.7**2 + 0.6**2 + 0.625**2)))
    # triangle: fill (0.7 − 0.55) / 0.1 = 1.5, offset (0.14 − 0.05) / 0.05 = 1.8, side 0.625
    assert got[0, 2] == pytest.approx(math.exp(-0.5 * (1.5**2 + 1.8**2 + 0.625**2)))


def test_relation_ramp_by_hand() -> None:
    # red 14 px square centred (14, 14), blue 15 px square at corner (27, 25): centroid (34.5, 32.5);
    # along = 20.5, across = 18.5: ramp(20.5 − 4) = 1, ramp(20.5 − 18.5) = ½ + 2 / 6 = 5/6
    img = _blank()
    img[0, 7:21, 7:21] = RED
    img[0, 25:40, 27:42] = COLORS["blue"]
    prompt = "a photo of a red square left of a blue square"
    res = PREF.score(img, [prompt])
    assert res.details[0]["requirements"]["relation:left of"] == pytest.approx(5 / 6, abs=1e-4)
    # requirements present:square (two of them), color:red square, color:blue square, relation
    assert res.score[0] == pytest.approx((3 + 5 / 6) / 4)
    assert SHAPES.score(img, [prompt]).score[0] == 1.0  # the detector's relation holds


def test_background_tint_by_hand() -> None:
    # background tinted by −16 in blue: background term exp(−16² / (2 · 16²)) = exp(−½). Edge band of
    # the 16 px square: its 60 boundary pixels (α = 1) and the 68 rim pixels just outside, whose α on
    # red's segment is (0, 0, −16) · (−20, −200, −200) / 80 400 = 3 200 / 80 400
    img = _red_square_16()
    bg = (img == BG).all(-1)
    img[bg] = (240, 240, 224)
    a = 3_200 / RED_SEG2
    edges = 1 - 68 * 4 * a * (1 - a) / 128
    q = (math.exp(-0.5) + edges + 1 + 1) / 4
    res = PREF.score(img, ["a photo of a red square"])
    assert res.details[0]["quality"] == pytest.approx(
        {"background": math.exp(-0.5), "edges": edges, "hue": 1.0, "uniformity": 1.0}, abs=1e-4
    )
    assert res.score[0] == pytest.approx((1 + q) / 2)


def test_soft_edge_hue_and_fill_by_hand() -> None:
    # a ring of 25 % red around the square: α = 0.25 exactly (stray pixels, neither class), blend
    # 4 · ¼ · ¾ = ¾ on the 68 rim pixels, 0 on the 60 boundary pixels: edges = 1 − 68 · ¾ / 128
    img = _red_square_16()
    ring = np.zeros((64, 64), dtype=bool)
    ring[23:41, 23:41] = True
    ring[24:40, 24:40] = False
    img[0, ring] = (235, 190, 190)  # bg + ¼ (red − bg) = (240 − 5, 240 − 50, 240 − 50)
    res = PREF.score(img, ["a photo of a red square"])
    assert res.details[0]["quality"]["edges"] == pytest.approx(1 - 68 * 0.75 / 128, abs=1e-4)
    assert res.details[0]["quality"]["background"] == 1.0  # the rim is not background
    # the whole square shifted by +24 in blue: hue exp(−24² / (2 · 16²)); boundary α =
    # (−20, −200, −176) · (−20, −200, −200) / 80 400 = 75 600 / 80 400
    img = _red_square_16()
    img[0, 24:40, 24:40] = RED + np.array([0, 0, 24])
    a = 75_600 / RED_SEG2
    q = PREF.score(img, ["a photo of a red square"]).details[0]["quality"]
    assert q == pytest.approx(
        {
            "background": 1.0,
            "edges": 1 - 60 * 4 * a * (1 - a) / 128,
            "hue": math.exp(-1.125),
            "uniformity": 1.0,
        },
        abs=1e-4,
    )
    # the 14 × 14 interior in a ±12 checkerboard on the red channel: mean exact, variance 144
    img = _red_square_16()
    checker = (np.indices((14, 14)).sum(0) % 2 * 2 - 1) * 12  # [14, 14] ±12
    img[0, 25:39, 25:39, 0] = (RED[0] + checker).astype(np.uint8)
    q = PREF.score(img, ["a photo of a red square"]).details[0]["quality"]
    assert q == pytest.approx(
        {"background": 1.0, "edges": 1.0, "hue": 1.0, "uniformity": math.exp(-144 / 512)}, abs=1e-4
    )


@pytest.mark.parametrize("prompt", ["a photo of a red square", "a photo of two red squares"])
def test_hacks_score_low(prompt: str) -> None:
    blank = _blank()
    red = np.empty_like(blank)
    red[:] = RED  # the right colour everywhere: one 64 px "square" for the detector
    grid = _blank()
    for y in range(4, 60, 20):
        for x in range(4, 60, 20):
            grid[0, y : y + 16, x : x + 16] = RED  # nine clean red squares
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    near_bg = np.clip(rng.normal(240, 30, (1, 64, 64, 3)), 0, 255).astype(np.uint8)
    for name, img in [("blank", blank), ("fill", red), ("noise", noise), ("near bg", near_bg)]:
        assert PREF.score(img, [prompt]).score[0] < 1e-6, name
    # nine objects where one or two are named: content ≤ 1 / (1 + 7)
    assert PREF.score(grid, [prompt]).score[0] <= 1 / 8
    if prompt == "a photo of a red square":
        assert SHAPES.score(red, [prompt]).score[0] == 1.0  # `shapes` takes the fill for a square


def test_dense_in_small_changes_and_monotone_in_blur() -> None:
    images, prompts = sample_batch(np.random.default_rng(6), 200)
    rng = np.random.default_rng(7)
    soft = ndimage.gaussian_filter(images.astype(np.float64), (0, 1.0, 1.0, 0)) + rng.normal(
        0, 6, images.shape
    )
    soft_u8 = np.clip(np.rint(soft), 0, 255).astype(np.uint8)
    base = PREF.score(soft_u8, prompts).score
    nudged = soft_u8.copy()
    nudged[:, 0, 0, 0] ^= 1  # one corner pixel's red channel changed by one level
    assert (PREF.score(nudged, prompts).score != base).mean() >= 0.95
    assert (SHAPES.score(nudged, prompts).score != SHAPES.score(soft_u8, prompts).score).mean() == 0.0
    means = []
    for sigma in (0.0, 0.7, 1.0, 1.5):
        blurred = ndimage.gaussian_filter(images.astype(np.float64), (0, sigma, sigma, 0))
        means.append(PREF.score(np.clip(np.rint(blurred), 0, 255).astype(np.uint8), prompts).score.mean())
    assert means[0] == pytest.approx(1.0) and all(a > b for a, b in itertools.pairwise(means))
    assert base.min() > 0 and base.max() < 1


def test_deterministic_equivariant_and_chunk_independent() -> None:
    rng = np.random.default_rng(3)
    images, prompts = sample_batch(rng, CHUNK + 44)
    images = np.clip(ndimage.gaussian_filter(images.astype(np.float64), (0, 0.8, 0.8, 0)), 0, 255).astype(
        np.uint8
    )
    images[::7] = rng.integers(0, 256, images[::7].shape, dtype=np.uint8)
    a, b = PREF.score(images, prompts), PREF.score(images.copy(), list(prompts))
    assert np.array_equal(a.score, b.score) and a.details == b.details
    perm = rng.permutation(len(prompts))
    c = PREF.score(images[perm], [prompts[i] for i in perm])
    assert np.array_equal(c.score, a.score[perm]) and c.details == [a.details[i] for i in perm]
    one = PREF.score(images[-1:], prompts[-1:])
    assert one.score[0] == a.score[-1] and one.details[0] == a.details[-1]
    empty = PREF.score(images[:0], [])
    assert len(empty) == 0


def test_details_are_exposed_like_shapes() -> None:
    images, prompts = sample_batch(np.random.default_rng(8), 24)
    images[::3] = np.clip(ndimage.gaussian_filter(images[::3].astype(np.float64), (0, 1, 1, 0)), 0, 255)
    pref, shapes = PREF.score(images, prompts), SHAPES.score(images, prompts)
    assert pref.strict is not None and np.array_equal(pref.strict, shapes.strict)  # type: ignore[arg-type]
    for i, (d, s) in enumerate(zip(pref.details, shapes.details, strict=True)):
        d = json.loads(json.dumps(d))
        assert set(d) == set(s) | {"content", "extra", "quality", "shapes"}
        for key in ("task", "objects", "blobs", "background_dev", "stray_frac", "specks"):
            assert d[key] == s[key], (i, key)
        assert list(d["requirements"]) == [r[0] for r in requirement_plan(prompts[i]).requirements] + (
            [f"relation:{requirement_plan(prompts[i]).relation[0]}"]  # type: ignore[index]
            if requirement_plan(prompts[i]).relation
            else []
        )
        assert set(d["quality"]) == {"background", "edges", "hue", "uniformity"}
        assert d["shapes"] == pytest.approx(shapes.score[i], abs=1e-4)
        q = sum(d["quality"].values()) / 4
        assert pref.score[i] == pytest.approx(d["content"] * (1 + q) / 2, abs=1e-3)
    # the evaluation summary reads them as it reads `shapes`': credit per requirement kind, quality
    from tpgrpo.stages.evaluate import detail_means

    texts = [json.dumps(d) for d in pref.details]
    summary, base = detail_means(texts), detail_means([json.dumps(d) for d in shapes.details])
    assert set(summary["requirements"]) == set(base["requirements"])
    assert summary["quality"] == base["quality"]


def test_registry_server_and_weighted_sum_with_shapes() -> None:
    reward = make_reward("shapes_pref")
    assert (reward.key, reward.version) == ("shapes_pref", "1")
    images, prompts = sample_batch(np.random.default_rng(9), 6)
    images[::2] = np.clip(ndimage.gaussian_filter(images[::2].astype(np.float64), (0, 1.2, 1.2, 0)), 0, 255)
    want = PREF.score(images, prompts)
    server = serve("shapes_pref")
    try:
        body = {"prompts": prompts, "images": [encode_image(im) for im in images]}
        data = requests.post(server.url + "/score", json=body, timeout=30).json()
        assert (data["key"], data["version"]) == ("shapes_pref", "1")
        assert data["scores"] == want.score.tolist()
        assert data["details"] == json.loads(json.dumps(want.details))
        remote = make_reward({"name": "http", "url": server.url, "key": "remote_pref"})
        assert np.array_equal(remote.score(images, prompts).score, want.score)
    finally:
        server.shutdown()
    mix = make_reward(
        {
            "name": "weighted",
            "components": [{"spec": "shapes", "weight": 0.3}, {"spec": "shapes_pref", "weight": 0.7}],
        }
    )
    got = mix.score(images, prompts)
    shapes = SHAPES.score(images, prompts)
    assert got.score == pytest.approx(0.3 * shapes.score + 0.7 * want.score)
    assert got.strict is not None and np.array_equal(got.strict, shapes.strict)  # type: ignore[arg-type]
    assert set(got.details[0]["components"]) == {"shapes", "shapes_pref"}
    assert mix.version == "1:0.3*shapes@1+0.7*shapes_pref@1"
