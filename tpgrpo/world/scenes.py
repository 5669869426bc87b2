"""Scenes of the synthetic world: random layouts that make a prompt true, and their rendering.

World rules (all in a 64×64 pixel frame; `render` rescales to other sizes):

- A flat `BACKGROUND`; objects painted in one `COLORS` colour each, hard edges (no antialiasing),
  so ground-truth pixels are exactly palette colours.
- An object is a `SHAPES` member inside a square bounding box of side `size`, an integer in
  `SIZE_RANGE` (14–20 px), with integer top-left corner: a square fills the box; a circle is the
  disc inscribed in it; a triangle is isosceles, apex at the top middle, base along the bottom.
  Fill ratios of the box ≈ 1, π/4 and 1/2, which is how the `shapes` reward tells them apart.
- Boxes keep `BORDER` (2 px) from the image edge and `GAP` (4 px) from each other: objects never
  touch or overlap.
- `sample_scene` places exactly the objects the prompt names (no distractors): single_object and
  colors one object, counting `count` objects, the pair tasks two objects. A colour the prompt
  leaves open is drawn uniformly per object. For `position` the relation must hold between the
  analytic centroids with `POSITION_MARGIN + 4` px and a cone slack of 4 px (see
  `tpgrpo.world.relations`), so rendered ground truth satisfies the reward's rule with room.
- Layouts are drawn by rejection sampling: sizes first, then each box uniformly among the
  positions allowed so far; a dead end (or, for `position`, a layout whose relation fails even
  after mirroring it along the diagonal and swapping the two boxes) restarts the scene.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.world.grammar import render_prompt, sample_spec
from tpgrpo.world.palette import BACKGROUND, COLORS, SHAPES, TASKS
from tpgrpo.world.relations import POSITION_MARGIN, relation_holds
from tpgrpo.world.spec import PromptSpec

CANVAS = 64
"""Side of the reference frame in which scene coordinates are given (pixels)."""
SIZE_RANGE = (14, 20)
"""Inclusive range of an object's bounding-box side (pixels)."""
BORDER = 2
"""Minimum distance of a bounding box from the image edge (pixels)."""
GAP = 4
"""Minimum gap between two bounding boxes along x or y (pixels)."""

_COLOR_NAMES = tuple(COLORS)
_RGB = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.uint8)  # [K, 3]
_MAX_RESTARTS = 1000


@dataclass(frozen=True)
class SceneObject:
    """One painted object.

    Args:
        shape (`str`): one of `SHAPES`.
        color (`str`): one of `COLORS`.
        center (`tuple[float, float]`): `(x, y)` centre of the bounding box in the 64-px frame.
        size (`int`): side of the bounding box (pixels).
    """

    shape: str
    color: str
    center: tuple[float, float]
    size: int

    @property
    def box(self) -> tuple[float, float, float, float]:
        """`(left, top, right, bottom)` of the bounding box (right/bottom exclusive)."""
        x, y = self.center
        h = self.size / 2
        return (x - h, y - h, x + h, y + h)

    @property
    def centroid(self) -> tuple[float, float]:
        """Analytic centroid `(x, y)`: the box centre, except a triangle's lies `size/6` lower."""
        x, y = self.center
        return (x, y + self.size / 6) if self.shape == "triangle" else (x, y)


@dataclass
class Scene:
    """A layout: the objects of one image (see the module docstring for the rules).

    Args:
        objects (`list[SceneObject]`): 1–4 objects, pairwise at least `GAP` apart.
    """

    objects: list[SceneObject] = field(default_factory=list)


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A random layout that makes the prompt true (exactly the objects it names).

    Args:
        spec (`PromptSpec`): the prompt's meaning.
        rng (`np.random.Generator`): the randomness.

    Returns:
        `Scene`: the layout.
    """
    wanted: list[tuple[str, str | None]] = [(o.shape, o.color) for o in spec.objects for _ in range(o.count)]
    for _ in range(_MAX_RESTARTS):
        colors = [c if c is not None else _COLOR_NAMES[int(rng.integers(len(COLORS)))] for _, c in wanted]
        sizes = rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=len(wanted))
        corners = _place([int(s) for s in sizes], rng)
        if corners is None:
            continue
        boxes = [(left + s / 2, top + s / 2, int(s)) for s, (left, top) in zip(sizes, corners, strict=True)]
        shapes = [shape for shape, _ in wanted]
        if spec.relation is None:
            return Scene(_objects(shapes, colors, boxes))
        # position: try the layout, its mirror image along the diagonal and both with the two
        # boxes swapped (all keep the border and gap rules): four times fewer rejections
        for transpose, swap in ((False, False), (False, True), (True, False), (True, True)):
            bs = [(y, x, s) if transpose else (x, y, s) for x, y, s in boxes]
            bs = bs[::-1] if swap else bs
            objects = _objects(shapes, colors, bs)
            a, b = (np.array(o.centroid) for o in objects)
            if relation_holds(spec.relation, a, b, margin=POSITION_MARGIN + 4, cone_slack=4):
                return Scene(objects)
    raise RuntimeError(f"no layout found for {spec} after {_MAX_RESTARTS} restarts")  # pragma: no cover


def _objects(
    shapes: list[str], colors: list[str], boxes: list[tuple[float, float, int]]
) -> list[SceneObject]:
    """Objects from parallel lists of shapes, colours and boxes `(centre x, centre y, side)`."""
    return [SceneObject(sh, c, (x, y), s) for sh, c, (x, y, s) in zip(shapes, colors, boxes, strict=True)]


def _place(sizes: list[int], rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Top-left corners for boxes of the given sides, pairwise `GAP` apart, or None at a dead end."""
    lo = BORDER
    corners: list[tuple[int, int]] = []
    for i, s in enumerate(sizes):
        hi = CANVAS - BORDER - s  # inclusive
        grid = np.arange(lo, hi + 1)
        ok = np.ones((grid.size, grid.size), dtype=bool)  # [top, left]
        for (left, top), t in zip(corners, sizes[:i], strict=True):
            # boxes [l, l+s) and [left, left+t) are GAP apart along x iff l ≥ left+t+GAP or l+s+GAP ≤ left
            x_ok = (grid >= left + t + GAP) | (grid + s + GAP <= left)  # [L]
            y_ok = (grid >= top + t + GAP) | (grid + s + GAP <= top)  # [T]
            ok &= y_ok[:, None] | x_ok[None, :]
        free = np.flatnonzero(ok)
        if free.size == 0:
            return None
        k = int(free[rng.integers(free.size)])
        corners.append((int(grid[k % grid.size]), int(grid[k // grid.size])))
    return corners


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Paint one scene.

    Args:
        scene (`Scene`): the layout (64-px frame).
        size (`int`): output side in pixels; coordinates are scaled by `size / 64`.

    Returns:
        `np.ndarray` uint8 of shape `[size, size, 3]`.
    """
    return render_batch([scene], size)[0]


def render_batch(scenes: Sequence[Scene], size: int = 64) -> np.ndarray:
    """Paint many scenes at once.

    A pixel `(row i, column j)` has its centre at `((j + 0.5), (i + 0.5)) * 64 / size` in the
    scene frame; it takes an object's colour when that centre lies inside the object (see
    `_inside`). At `size == 64` with integer box corners (every sampled scene) each object is a
    cached sprite pasted into its box; otherwise the masks are computed over the whole image,
    vectorised over objects. Both paths give identical pixels.

    Args:
        scenes (`Sequence[Scene]`): the layouts.
        size (`int`): output side in pixels.

    Returns:
        `np.ndarray` uint8 of shape `[N, size, size, 3]`.
    """
    if size < 8:
        raise UserError(f"image size must be at least 8 pixels, got {size}")
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)  # [N, H, W, 3]
    out[:] = BACKGROUND
    slow: list[tuple[int, SceneObject]] = []
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            left, top = o.center[0] - o.size / 2, o.center[1] - o.size / 2
            if size == CANVAS and left.is_integer() and top.is_integer():
                x, y, s = int(left), int(top), o.size
                out[i, y : y + s, x : x + s][_sprite(o.shape, s)] = COLORS[o.color]
            else:
                slow.append((i, o))
    if slow:
        _paint_full(out, slow)
    return out


@functools.cache
def _sprite(shape: str, s: int) -> np.ndarray:
    """The mask `[s, s]` bool of an object whose box is exactly the `s × s` pixel block."""
    c = np.arange(s) + 0.5 - s / 2  # pixel-centre offsets from the box centre
    return _inside(SHAPES.index(shape), c[None, :], c[:, None], s / 2)


def _inside(code: np.ndarray | int, dx: np.ndarray, dy: np.ndarray, h: np.ndarray | float) -> np.ndarray:
    """Whether points at offsets `(dx, dy)` from a box centre lie inside the object.

    Args:
        code (`np.ndarray | int`): shape index into `SHAPES` (broadcast).
        dx, dy (`np.ndarray`): offsets in the scene frame (broadcast).
        h (`np.ndarray | float`): half the box side (broadcast).

    Returns:
        `np.ndarray` bool of the broadcast shape.
    """
    in_box = (np.abs(dx) < h) & (np.abs(dy) < h)  # square: the open box
    circle = dx**2 + dy**2 <= h**2  # disc inscribed in the box
    triangle = in_box & (np.abs(dx) <= (dy + h) / 2)  # half-width 0 at the top, h at the bottom
    return np.where(code == 0, circle, np.where(code == 1, in_box, triangle))


def _paint_full(out: np.ndarray, objs: list[tuple[int, SceneObject]]) -> None:
    """Paint objects into `out` `[N, H, W, 3]` by testing every pixel centre (any size, any centre)."""
    n, size = out.shape[0], out.shape[1]
    flat = out.reshape(n, size * size, 3)  # [N, H*W, 3] view
    img = np.array([i for i, _ in objs])  # [M]
    code = np.array([SHAPES.index(o.shape) for _, o in objs])[:, None, None]  # [M, 1, 1]
    cx = np.array([o.center[0] for _, o in objs])[:, None, None]  # [M, 1, 1]
    cy = np.array([o.center[1] for _, o in objs])[:, None, None]  # [M, 1, 1]
    half = np.array([o.size / 2 for _, o in objs])[:, None, None]  # [M, 1, 1]
    rgb = _RGB[[_COLOR_NAMES.index(o.color) for _, o in objs]]  # [M, 3]
    p = (np.arange(size) + 0.5) * (CANVAS / size)  # [W] pixel centres in the scene frame
    for start in range(0, len(objs), 256):
        sl = slice(start, start + 256)
        mask = _inside(code[sl], p[None, None, :] - cx[sl], p[None, :, None] - cy[sl], half[sl])  # [m, H, W]
        k, pix = np.nonzero(mask.reshape(mask.shape[0], -1))
        flat[img[sl][k], pix] = rgb[sl][k]


def sample_batch(
    rng: np.random.Generator, n: int, size: int = 64, tasks: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Draw `n` (image, prompt) pairs for pretraining: a uniform task, a uniform prompt of it, a
    random layout making it true, rendered.

    Args:
        rng (`np.random.Generator`): the randomness.
        n (`int`): batch size.
        size (`int`): image side in pixels.
        tasks (`Sequence[str] | None`): tasks to draw from (uniformly); None for all of `TASKS`.

    Returns:
        `tuple[np.ndarray, list[str]]`: images uint8 `[n, size, size, 3]` and their `n` prompts.
    """
    pool = tuple(TASKS if tasks is None else tasks)
    unknown = [t for t in pool if t not in TASKS]
    if unknown or not pool:
        raise UserError(f"unknown or no tasks {unknown or list(pool)}; choose from {list(TASKS)}")
    task_idx = rng.integers(len(pool), size=n)
    specs = [sample_spec(rng, pool[int(t)]) for t in task_idx]
    scenes = [sample_scene(s, rng) for s in specs]
    return render_batch(scenes, size), [render_prompt(s) for s in specs]
