"""Scenes: layouts obey the world's rules and make the prompt true; rendering is exact."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from tpgrpo.errors import UserError
from tpgrpo.world.grammar import parse, sample_spec
from tpgrpo.world.palette import BACKGROUND, COLORS, TASKS
from tpgrpo.world.relations import relation_holds
from tpgrpo.world.scenes import (
    BORDER,
    GAP,
    SIZE_RANGE,
    Scene,
    SceneObject,
    _paint_full,
    render,
    render_batch,
    sample_batch,
    sample_scene,
)


def _gap(a: SceneObject, b: SceneObject) -> float:
    (l1, t1, r1, b1), (l2, t2, r2, b2) = a.box, b.box
    return max(l2 - r1, l1 - r2, t2 - b1, t1 - b2)


def test_layouts_obey_rules_and_make_prompts_true() -> None:
    rng = np.random.default_rng(0)
    for i in range(3000):
        spec = sample_spec(rng, TASKS[i % len(TASKS)])
        scene = sample_scene(spec, rng)
        want = Counter((o.shape, o.color) for o in spec.objects for _ in range(o.count))
        named = spec.objects[0].color is not None  # all objects of a spec name a colour, or none does
        got = Counter((o.shape, o.color if named else None) for o in scene.objects)
        assert got == want, spec
        for o in scene.objects:
            left, top, right, bottom = o.box
            assert SIZE_RANGE[0] <= o.size <= SIZE_RANGE[1] and o.color in COLORS
            assert min(left, top) >= BORDER and max(right, bottom) <= 64 - BORDER
            assert left.is_integer() and top.is_integer()
        assert all(_gap(a, b) >= GAP for a, b in combinations(scene.objects, 2))
        if spec.relation is not None:
            a, b = (np.array(o.centroid) for o in scene.objects)
            assert relation_holds(spec.relation, a, b, margin=8, cone_slack=4)


def test_sampling_is_deterministic() -> None:
    spec = parse("a photo of four red triangles")
    assert sample_scene(spec, np.random.default_rng(3)) == sample_scene(spec, np.random.default_rng(3))
    x1, p1 = sample_batch(np.random.default_rng(5), 64)
    x2, p2 = sample_batch(np.random.default_rng(5), 64)
    assert p1 == p2 and np.array_equal(x1, x2)


def test_render_paints_exact_shapes() -> None:
    # boxes with integer corners: square 16x16 = 256 px; circle of diameter 16 and triangle of
    # base and height 16 have fill ratios near pi/4 and 1/2 of the box
    scene = Scene(
        [
            SceneObject("square", "red", (12.0, 12.0), 16),
            SceneObject("circle", "blue", (40.0, 12.0), 16),
            SceneObject("triangle", "green", (12.0, 44.0), 16),
        ]
    )
    img = render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    counts = {c: int((img == COLORS[c]).all(-1).sum()) for c in ("red", "blue", "green")}
    assert counts["red"] == 256
    assert abs(counts["blue"] / 256 - np.pi / 4) < 0.03
    assert abs(counts["green"] / 256 - 0.5) < 0.05
    assert (img[4:20, 4:20] == COLORS["red"]).all()
    bg = (img == BACKGROUND).all(-1)
    assert bg.sum() == 64 * 64 - sum(counts.values())
    assert (render(Scene([])) == BACKGROUND).all()


def test_render_only_uses_palette_and_both_paths_agree() -> None:
    rng = np.random.default_rng(1)
    scenes = [sample_scene(sample_spec(rng), rng) for _ in range(300)]
    fast = render_batch(scenes)
    refs = np.array([BACKGROUND, *COLORS.values()], dtype=np.uint8)
    assert (fast[..., None, :] == refs).all(-1).any(-1).all()
    slow = np.empty_like(fast)
    slow[:] = BACKGROUND
    _paint_full(slow, [(i, o) for i, sc in enumerate(scenes) for o in sc.objects])
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("size", [32, 96, 128])
def test_render_other_sizes_scales_the_scene(size: int) -> None:
    scene = Scene([SceneObject("square", "yellow", (20.0, 20.0), 16)])
    img = render(scene, size)
    assert img.shape == (size, size, 3)
    frac = (img == COLORS["yellow"]).all(-1).mean()
    assert abs(frac - 16 * 16 / 64**2) < 0.01
    with pytest.raises(UserError, match="at least 8"):
        render(scene, 4)


def test_sample_batch_tasks_and_errors() -> None:
    rng = np.random.default_rng(2)
    imgs, prompts = sample_batch(rng, 50, tasks=["counting", "position"])
    assert imgs.shape == (50, 64, 64, 3) and imgs.dtype == np.uint8 and len(prompts) == 50
    assert {parse(p).task for p in prompts} == {"counting", "position"}
    imgs, prompts = sample_batch(rng, 3, size=32)
    assert imgs.shape == (3, 32, 32, 3)
    with pytest.raises(UserError, match="unknown or no tasks"):
        sample_batch(rng, 2, tasks=["drawing"])
    with pytest.raises(UserError, match="unknown or no tasks"):
        sample_batch(rng, 2, tasks=[])
