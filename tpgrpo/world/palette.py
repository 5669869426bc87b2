"""The fixed vocabulary of the synthetic world: colours, shapes, relations, counts and task tags.

Every image of the world is a flat light `BACKGROUND` with 1–4 non-overlapping objects, each a
`SHAPES` member painted in one `COLORS` colour. The colours are far apart in RGB (every pair,
background included, is ≥ 139 apart in Euclidean RGB distance, see `min_color_distance`), so a
tiny VAE can reproduce them and a detector can classify pixels by the nearest colour.

Order matters: `COLORS`, `SHAPES`, `RELATIONS` and `NUMBERS` are enumerated in this order by the
prompt grammar and by the detector's class indices; only append, never reorder.
"""

from __future__ import annotations

import itertools
import math

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (170, 40, 170),
}
"""The object colours (name -> RGB)."""

BACKGROUND: tuple[int, int, int] = (240, 240, 240)
"""The flat light background colour (RGB)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""The object shapes. Fill ratio of the bounding box: square 1, circle ≈ π/4, triangle ≈ 1/2."""

PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
"""Plural of each shape, as the counting prompts spell it."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations of `position` prompts: `A <relation> B` compares the centroids of A and B."""

NUMBERS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
"""The counts of `counting` prompts and their number words."""

TASKS: tuple[str, ...] = ("single_object", "counting", "colors", "position", "two_object", "color_attr")
"""GenEval-style task tags, one prompt template family each (see `tpgrpo.world.prompts`)."""


def min_color_distance() -> float:
    """Smallest Euclidean RGB distance between any two of `COLORS` and `BACKGROUND`.

    Returns:
        `float`: the distance (≈ 139.3 for the palette above).
    """
    refs = [BACKGROUND, *COLORS.values()]
    return min(math.dist(a, b) for a, b in itertools.combinations(refs, 2))
