"""The palette: far-apart colours, fixed order."""

from __future__ import annotations

from tpgrpo.world.palette import (
    BACKGROUND,
    COLORS,
    NUMBERS,
    PLURALS,
    RELATIONS,
    SHAPES,
    TASKS,
    min_color_distance,
)


def test_palette_sizes_and_order() -> None:
    assert 4 <= len(COLORS) <= 6
    assert SHAPES == ("circle", "square", "triangle")
    assert TASKS == ("single_object", "counting", "colors", "position", "two_object", "color_attr")
    assert RELATIONS == ("left of", "right of", "above", "below")
    assert set(PLURALS) == set(SHAPES) and sorted(NUMBERS) == [2, 3, 4]


def test_colours_far_apart_and_background_light() -> None:
    # nearest pair: red (220,40,40) vs purple (170,40,170): sqrt(50² + 0² + 130²) ≈ 139.3
    assert abs(min_color_distance() - (50**2 + 130**2) ** 0.5) < 1e-9
    assert min(BACKGROUND) >= 200
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in COLORS.values())
