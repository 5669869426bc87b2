"""The `shapes` reward: agreement with the generator, partial credit by hand, noise, determinism."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from tpgrpo.errors import UserError
from tpgrpo.rewards.shapes import ShapesReward, requirement_plan
from tpgrpo.rewards.shapes_detector import CHUNK, COLOR_NAMES, detect
from tpgrpo.world.grammar import render_prompt, sample_spec
from tpgrpo.world.palette import COLORS, SHAPES, TASKS
from tpgrpo.world.scenes import Scene, SceneObject, render, render_batch, sample_batch, sample_scene

REWARD = ShapesReward()


def _scene(*objs: tuple[str, str, float, float, int]) -> np.ndarray:
    """Render `(shape, colour, x, y, size)` objects into one image `[1, 64, 64, 3]`."""
    return render(Scene([SceneObject(s, c, (x, y), n) for s, c, x, y, n in objs]))[None]


def test_generator_and_detector_agree_on_thousands_of_scenes() -> None:
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng, TASKS[i % len(TASKS)]) for i in range(3000)]
    scenes = [sample_scene(s, rng) for s in specs]
    images = render_batch(scenes)
    res = REWARD.score(images, [render_prompt(s) for s in specs])
    assert res.strict is not None and res.strict.all()
    assert res.score.min() == 1.0
    det = detect(images)
    for i, scene in enumerate(scenes):
        sel = det.image == i
        found = Counter(
            (SHAPES[s], COLOR_NAMES[c]) for s, c in zip(det.shape[sel], det.color[sel], strict=True)
        )
        assert found == Counter((o.shape, o.color) for o in scene.objects), i
        truth = np.array(sorted(o.centroid for o in scene.objects))
        got = det.centroid[sel][np.lexsort(det.centroid[sel].T[::-1])]
        assert np.abs(got - truth).max() < 0.6  # raster vs analytic centroid
    for task in TASKS:
        by_task = [d["task"] == task for d in res.details]
        assert sum(by_task) == 500


def test_soft_edges_and_mild_noise_still_score() -> None:
    # a decoder blurs edges and adds noise: ground truth blurred with sigma 1 px plus N(0, 8) noise
    rng = np.random.default_rng(1)
    images, prompts = sample_batch(rng, 600)
    soft = ndimage.gaussian_filter(images.astype(np.float64), (0, 1.0, 1.0, 0)) + rng.normal(
        0, 8, images.shape
    )
    res = REWARD.score(np.clip(np.rint(soft), 0, 255).astype(np.uint8), prompts)
    assert res.score.mean() >= 0.98


def test_noise_scores_zero() -> None:
    rng = np.random.default_rng(2)
    _, prompts = sample_batch(rng, 300)
    uniform = rng.integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    near_bg = np.clip(rng.normal(240, 30, (300, 64, 64, 3)), 0, 255).astype(np.uint8)
    for images in (uniform, near_bg):
        res = REWARD.score(images, prompts)
        assert res.score.mean() < 0.01 and res.strict is not None and not res.strict.any()


def test_deterministic_equivariant_and_chunk_independent() -> None:
    rng = np.random.default_rng(3)
    images, prompts = sample_batch(rng, CHUNK + 44)
    images[::7] = rng.integers(0, 256, images[::7].shape, dtype=np.uint8)  # some garbage too
    a, b = REWARD.score(images, prompts), REWARD.score(images.copy(), list(prompts))
    assert np.array_equal(a.score, b.score) and a.details == b.details
    perm = rng.permutation(len(prompts))
    c = REWARD.score(images[perm], [prompts[i] for i in perm])
    assert np.array_equal(c.score, a.score[perm]) and c.details == [a.details[i] for i in perm]
    one = REWARD.score(images[-1:], prompts[-1:])
    assert one.score[0] == a.score[-1] and one.details[0] == a.details[-1]


@pytest.mark.parametrize(
    ("prompt", "objects", "requirements"),
    [
        # counting: 1 - |k - n| / n
        (
            "a photo of three squares",
            [("square", "red", 12, 12, 16), ("square", "blue", 40, 12, 16)],
            {"count:square": 2 / 3},
        ),
        (
            "a photo of three squares",
            [
                ("square", "red", 12, 12, 16),
                ("square", "blue", 40, 12, 16),
                ("square", "red", 12, 40, 16),
                ("circle", "red", 40, 40, 16),
            ],
            {"count:square": 1.0},
        ),
        (
            "a photo of two red squares",
            [("square", "red", 12, 12, 16), ("square", "blue", 40, 12, 16)],
            {"count:square": 1.0, "count:red square": 0.5},
        ),
        (
            "a photo of a green triangle",
            [("triangle", "blue", 30, 30, 18)],
            {"present:triangle": 1.0, "color:green triangle": 0.0},
        ),
        ("a photo of a circle", [("square", "yellow", 30, 30, 18)], {"present:circle": 0.0}),
        (
            "a photo of a circle and a square",
            [("square", "yellow", 30, 30, 18)],
            {"present:circle": 0.0, "present:square": 1.0},
        ),
        (
            # the one red circle cannot be both circles
            "a photo of a red circle and a blue circle",
            [("circle", "red", 30, 30, 18)],
            {"present:circle": 0.5, "color:red circle": 1.0, "color:blue circle": 0.0},
        ),
        (
            "a photo of a red circle left of a blue square",
            [("circle", "red", 14, 30, 16), ("square", "blue", 46, 30, 16)],
            {
                "present:circle": 1.0,
                "present:square": 1.0,
                "color:red circle": 1.0,
                "color:blue square": 1.0,
                "relation:left of": 1.0,
            },
        ),
        (
            "a photo of a red circle left of a blue square",
            [("circle", "red", 46, 30, 16), ("square", "blue", 14, 30, 16)],
            {
                "present:circle": 1.0,
                "present:square": 1.0,
                "color:red circle": 1.0,
                "color:blue square": 1.0,
                "relation:left of": 0.0,
            },
        ),
        (
            "a photo of a red circle above a blue square",
            [("circle", "red", 46, 14, 16)],
            {
                "present:circle": 1.0,
                "present:square": 0.0,
                "color:red circle": 1.0,
                "color:blue square": 0.0,
                "relation:above": 0.0,
            },
        ),
    ],
)
def test_partial_credit_by_hand(
    prompt: str, objects: list[tuple[str, str, float, float, int]], requirements: dict[str, float]
) -> None:
    res = REWARD.score(_scene(*objects), [prompt])
    got = res.details[0]["requirements"]
    assert got == pytest.approx(requirements, abs=1e-4)
    assert res.score[0] == pytest.approx(sum(requirements.values()) / len(requirements))
    assert res.strict is not None and bool(res.strict[0]) == all(v == 1 for v in requirements.values())


def test_details_are_json_and_describe_objects() -> None:
    res = REWARD.score(
        _scene(("triangle", "purple", 20, 20, 18), ("square", "green", 46, 46, 14)), ["a photo of a triangle"]
    )
    d = json.loads(json.dumps(res.details[0]))
    assert set(d) == {"task", "requirements", "objects", "blobs", "background_dev", "stray_frac", "specks"}
    assert d["task"] == "single_object" and d["blobs"] == 0
    assert [(o["shape"], o["color"]) for o in d["objects"]] == [("square", "green"), ("triangle", "purple")]
    tri = d["objects"][1]
    assert tri["centroid"] == pytest.approx(
        [20, 23], abs=0.5
    )  # 18 px triangle: centroid 3 px below box centre
    assert tri["area"] == pytest.approx(18 * 18 / 2, rel=0.1)


def test_blobs_are_not_objects() -> None:
    img = _scene(("square", "red", 30, 30, 16))
    img[0, 10:14, 5:40] = COLORS["blue"]  # a 4 x 35 bar: aspect 8.75
    res = REWARD.score(img, ["a photo of a square"])
    d = res.details[0]
    assert d["blobs"] == 1 and [o["shape"] for o in d["objects"]] == ["square"]
    assert d["stray_frac"] == pytest.approx(4 * 35 / 64**2, abs=1e-4)


def test_other_image_sizes() -> None:
    rng = np.random.default_rng(4)
    specs = [sample_spec(rng) for _ in range(120)]
    scenes = [sample_scene(s, rng) for s in specs]
    for size in (48, 128):
        res = REWARD.score(render_batch(scenes, size), [render_prompt(s) for s in specs])
        assert res.score.mean() >= 0.98, size


def test_requirement_plan_and_errors() -> None:
    plan = requirement_plan("a photo of a red circle and a blue circle")
    assert plan.task == "color_attr" and [r[0] for r in plan.requirements] == [
        "present:circle",
        "color:red circle",
        "color:blue circle",
    ]
    assert plan.requirements[0][4] == 2  # two circles needed
    img = _scene(("circle", "red", 30, 30, 16))
    with pytest.raises(UserError, match="'a photo of a dog'"):
        REWARD.score(img, ["a photo of a dog"])
    with pytest.raises(UserError, match="uint8"):
        REWARD.score(img.astype(np.float32), ["a photo of a circle"])
