"""When does `A <relation> B` hold: the one rule shared by the scene sampler and the `shapes` reward.

Coordinates are image pixels, x to the right and y downwards, measured in a 64-pixel frame (the
reward rescales other image sizes). With `d = centroid(B) - centroid(A)`:

- `A left of B`  iff  `d.x ≥ margin` and `d.x ≥ |d.y|`
- `A right of B` iff `-d.x ≥ margin` and `-d.x ≥ |d.y|`
- `A above B`    iff  `d.y ≥ margin` and `d.y ≥ |d.x|`
- `A below B`    iff `-d.y ≥ margin` and `-d.y ≥ |d.x|`

i.e. B lies at least `margin` pixels away along the relation's axis and inside the 90° cone
around it, so at most one relation of each axis holds and "left of" never means "mostly above".
(GenEval uses a similar centroid offset with a threshold; we make the cone explicit.)
"""

from __future__ import annotations

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.world.palette import RELATIONS

POSITION_MARGIN: float = 4.0
"""Minimum centroid offset (pixels in the 64-pixel frame) along the relation's axis."""

INVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
"""`A r B` ⇔ `B INVERSE[r] A`."""

# relation -> (unit axis vector (x, y) pointing from A to B)
_AXIS: dict[str, tuple[float, float]] = {
    "left of": (1.0, 0.0),
    "right of": (-1.0, 0.0),
    "above": (0.0, 1.0),
    "below": (0.0, -1.0),
}


def relation_holds(
    relation: str,
    a: np.ndarray,
    b: np.ndarray,
    margin: float = POSITION_MARGIN,
    cone_slack: float = 0.0,
) -> np.ndarray:
    """Whether `A <relation> B` holds, elementwise over broadcast centroid arrays.

    Args:
        relation (`str`): one of `RELATIONS`.
        a (`np.ndarray` of shape `[..., 2]`): centroids `(x, y)` of A.
        b (`np.ndarray` of shape `[..., 2]`): centroids `(x, y)` of B, broadcastable with `a`.
        margin (`float`): minimum offset along the relation's axis.
        cone_slack (`float`): extra pixels by which the axial offset must exceed the
            perpendicular one (0 for the reward; the scene sampler asks for more, so that
            rendered ground truth holds with room to spare).

    Returns:
        `np.ndarray` of bool, the broadcast shape of `a` and `b` without the last axis.
    """
    if relation not in _AXIS:
        raise UserError(f"unknown relation {relation!r}; expected one of {list(RELATIONS)}")
    ux, uy = _AXIS[relation]
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)  # [..., 2]
    along = d[..., 0] * ux + d[..., 1] * uy  # [...]
    across = np.abs(d[..., 0] * uy - d[..., 1] * ux)  # [...]
    return (along >= margin) & (along >= across + cone_slack)
