"""`relation_holds`: margin and cone, hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from tpgrpo.errors import UserError
from tpgrpo.world.relations import INVERSE, relation_holds


@pytest.mark.parametrize(
    ("relation", "a", "b", "expected"),
    [
        ("left of", (10, 30), (30, 30), True),  # d = (20, 0)
        ("left of", (10, 30), (13, 30), False),  # d.x = 3 < margin 4
        ("left of", (10, 30), (14, 30), True),  # d.x = 4 = margin
        ("left of", (10, 30), (30, 51), False),  # d = (20, 21): outside the 90° cone
        ("left of", (10, 30), (30, 50), True),  # d = (20, 20): on the cone's edge
        ("right of", (30, 30), (10, 30), True),
        ("above", (30, 10), (30, 40), True),  # y grows downwards
        ("below", (30, 10), (30, 40), False),
        ("below", (30, 40), (25, 10), True),  # d = (-5, -30)
    ],
)
def test_hand_cases(relation: str, a: tuple[int, int], b: tuple[int, int], expected: bool) -> None:
    assert bool(relation_holds(relation, np.array(a), np.array(b))) is expected


def test_broadcasting_inverse_and_slack() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 64, (500, 2)), rng.uniform(0, 64, (500, 2))
    for r, inv in INVERSE.items():
        np.testing.assert_array_equal(relation_holds(r, a, b), relation_holds(inv, b, a))
    both = relation_holds("left of", a[:, None], b[None, :])
    assert both.shape == (500, 500)
    assert not (relation_holds("left of", a, b) & relation_holds("right of", a, b)).any()
    assert (relation_holds("above", a, b, cone_slack=3) <= relation_holds("above", a, b)).all()
    with pytest.raises(UserError, match="unknown relation"):
        relation_holds("behind", a, b)
