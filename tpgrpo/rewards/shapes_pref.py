"""The `shapes_pref` reward: a dense, preference-like score of the shapes world, in [0, 1].

`shapes` is a detector's verdict: most small changes of an image leave it where it was. This
reward scores the same prompts with graded credit that moves a little with almost every pixel, as
a learned preference model would, and it also scores what the last sampling steps decide (edges,
fills, hues, background). It runs on the `shapes` detector's segmentation
(`tpgrpo.rewards.shapes_detector.segment`): candidates are the colour components of at least
`MIN_OBJECT_AREA` pixels, recognised shapes and blobs alike.

**Objectness.** Each candidate `o` has its box features: fill ratio `f`, centroid offset below the
box centre `u` (over the box height), aspect ratio `a` (long side / short side) and longer side `z`
in pixels of the 64×64 frame. With `e(v, [lo, hi], σ) = max(0, lo − v, v − hi) / σ` (0 inside the
window), the likelihood that `o` is a well-drawn object of shape `S` is

    p_S(o) = exp(−½ [e(f, F_S, 0.1)² + e(u, U_S, 0.05)² + e(a, [1, 1.08], 0.3)² + e(z, [14, 20], 4)²])

with `F_circle = [0.77, 0.82]`, `F_square = [0.97, 1]`, `F_triangle = [0.49, 0.55]`,
`U_circle = U_square = [−0.02, 0.02]`, `U_triangle = [0.14, 0.17]`: the ranges a clean render of
the world takes (`tpgrpo.world.scenes`: boxes of 14–20 px), so ground truth has `p = 1` for its
shape and a blurred, lopsided, stretched, too small or too large object gets partial credit.

**Content** `C`. Soft counts replace the detector's integer counts: `k(S) = Σ_o p_S(o)` and
`k(C S) = Σ_{o of colour C} p_S(o)`. The prompt's requirements are those of `shapes` (same names,
same kinds), evaluated on soft counts: `present:S` = min(k(S), m) / m, `count:…` = max(0, 1 −
|k − n| / n), `color:C S` = min(k(C S), 1). A position prompt's `relation:R` is
`max_{a, b} p_A(a) p_B(b) ramp(along − 4) ramp(along − across)` over candidates `a ≠ b` of A's and
B's colours, with `along` and `across` the centroid offsets of `tpgrpo.world.relations` and
`ramp(t) = clip(½ + t / 6, 0, 1)` (0.5 on the `shapes` threshold, 1 three pixels beyond it; the
scene sampler keeps four).
Extra objects cost: with `N` the number of objects the prompt names and `x = max(0, Σ_o max_S
p_S(o) − N)`, `C = mean(requirements) / (1 + x)`.

**Quality** `Q`, the mean of four terms in [0, 1] (with `B` the background, `c_o` the palette
colour of `o`, pixel values 0–255):

- `background`: mean over the pixels outside the recognised objects (grown by one pixel, the
  detector's quality mask) of `exp(−|x − B|² / (2 · 16²))`;
- `edges`: per candidate, 1 − the mean over its edge band (pixels of `o` with a 4-neighbour not
  in `o`, and pixels within one pixel of `o`) of `4 α (1 − α)`, where `α ∈ [0, 1]` is the pixel's
  position on the segment from `B` to `c_o` (a hard edge has only α ∈ {0, 1});
- `hue`: per candidate, `exp(−|μ_o − c_o|² / (2 · 16²))` with `μ_o` the mean of its interior
  pixels (those whose four neighbours are in `o`);
- `uniformity`: per candidate, `exp(−v_o / (2 · 16²))` with `v_o` the variance of its interior
  pixels (summed over channels).

The three object terms are averaged over the image's candidates weighted by `max_S p_S(o)` (0 if
it has none, or if a candidate has no interior). The score is

    score = C · (1 + Q) / 2

so ground truth scores 1, an image without the prompt's content scores 0 however clean it is (a
blank background, one colour everywhere: a 64-px "square" is no object), and rendering quality
moves the score by up to half of the content credit. Every term is continuous in the pixel values
for a fixed segmentation; the segmentation itself (a pixel changing class, components merging)
changes the score in steps of the size of one pixel's share of a feature.

`strict` is the `shapes` reward's verdict on the same detections (GenEval's correct/incorrect), so
accuracy stays comparable across the two rewards.

`details` per image: everything `shapes` writes (`task`, `requirements` — here the soft credits —,
`objects`, `blobs`, `background_dev`, `stray_frac`, `specks`), plus `content` (C), `extra`
(x), `quality` {`background`, `edges`, `hue`, `uniformity`} and `shapes` (the `shapes` score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tpgrpo.rewards.base import RewardResult, check_batch
from tpgrpo.rewards.shapes import Plan, requirement_plan, score_detections
from tpgrpo.rewards.shapes_detector import CHUNK, COLOR_NAMES, Segmentation, detections_of, segment
from tpgrpo.world.palette import BACKGROUND, COLORS, SHAPES
from tpgrpo.world.relations import POSITION_MARGIN

__all__ = ["ShapesPrefReward", "shape_likelihood"]

FILL: dict[str, tuple[float, float]] = {
    "circle": (0.77, 0.82),
    "square": (0.97, 1.0),
    "triangle": (0.49, 0.55),
}
"""Fill-ratio window of a clean render of each shape."""
OFFSET: dict[str, tuple[float, float]] = {
    "circle": (-0.02, 0.02),
    "square": (-0.02, 0.02),
    "triangle": (0.14, 0.17),
}
"""Window of the centroid's offset below the box centre (over the box height) of each shape."""
ASPECT, SIDE = (1.0, 1.08), (14.0, 20.0)
"""Windows of the box aspect ratio and of the longer box side (pixels of the 64×64 frame)."""
SIGMA_FILL, SIGMA_OFFSET, SIGMA_ASPECT, SIGMA_SIDE = 0.1, 0.05, 0.3, 4.0
"""Scales of the penalty outside each window."""
SIGMA_BACKGROUND, SIGMA_HUE, SIGMA_UNIFORMITY = 16.0, 16.0, 16.0
"""RGB scales of the background, hue and uniformity terms."""
RAMP = 3.0
"""Half-width (pixels) of the relation ramps: 0.5 on the `shapes` threshold, 1 at `RAMP` beyond it."""

_BG = np.array(BACKGROUND, dtype=np.float32)  # [3]
_DIR = np.array(list(COLORS.values()), dtype=np.float32) - _BG  # [K, 3] background-to-colour segments
_PAL = np.array(list(COLORS.values()), dtype=np.float64)  # [K, 3]
_LO = np.array([[FILL[s][0], OFFSET[s][0]] for s in SHAPES])  # [3, 2]
_HI = np.array([[FILL[s][1], OFFSET[s][1]] for s in SHAPES])  # [3, 2]
_SIGMA = np.array([SIGMA_FILL, SIGMA_OFFSET])  # [2]
_BG_TABLE = np.exp(
    -((np.arange(256)[None, :] - _BG.astype(np.float64)[:, None]) ** 2) / (2 * SIGMA_BACKGROUND**2)
).astype(np.float32)  # [3, 256] exp(−(v − B_c)² / 2σ²) per channel
_AXIS = {"left of": (1.0, 0.0), "right of": (-1.0, 0.0), "above": (0.0, 1.0), "below": (0.0, -1.0)}


def _excess(
    v: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray, sigma: float | np.ndarray
) -> np.ndarray:
    """`max(0, lo − v, v − hi) / sigma`, elementwise."""
    return np.maximum(np.maximum(lo - v, v - hi), 0.0) / sigma


def shape_likelihood(
    fill: np.ndarray, offset: np.ndarray, aspect: np.ndarray, side: np.ndarray
) -> np.ndarray:
    """`p_S(o)` of the module docstring for every candidate and shape.

    Args:
        fill, offset, aspect, side (`np.ndarray` `[M]`): box features (`Segmentation`).

    Returns:
        `np.ndarray` float64 `[M, 3]`: likelihoods in (0, 1], columns in `SHAPES` order.
    """
    feats = np.stack([fill, offset], axis=1)[:, None, :]  # [M, 1, 2]
    e_shape = (_excess(feats, _LO[None], _HI[None], _SIGMA) ** 2).sum(-1)  # [M, 3]
    e_common = _excess(aspect, *ASPECT, SIGMA_ASPECT) ** 2 + _excess(side, *SIDE, SIGMA_SIDE) ** 2  # [M]
    return np.exp(-0.5 * (e_shape + e_common[:, None]))


class ShapesPrefReward:
    """Dense preference-like reward of the shapes world (see the module docstring)."""

    key = "shapes_pref"
    version = "1"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score images against their prompts.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images (features are measured in the
                64×64 frame of the world and rescaled).
            prompts (`Sequence[str]`): `N` prompts of the shapes-world grammar.

        Returns:
            `RewardResult`: scores `[N]` in [0, 1], the `shapes` strict verdicts `[N]`, details.

        Raises:
            `UserError`: bad images or a prompt outside the grammar.
        """
        check_batch(images, prompts)
        plans = [requirement_plan(p) for p in prompts]  # parses every prompt before any work
        parts = [
            _score_chunk(images[i : i + CHUNK], plans[i : i + CHUNK]) for i in range(0, len(plans), CHUNK)
        ]
        return RewardResult.concat(parts) if parts else RewardResult(np.zeros(0), np.zeros(0, bool), [])


def _object_quality(seg: Segmentation) -> np.ndarray:
    """Edge, hue and uniformity terms of every candidate, `[M, 3]` float64 (module docstring)."""
    images = seg.images
    n, h, w, _ = images.shape
    m = seg.candidates.shape[0]
    if m == 0:
        return np.zeros((0, 3))
    cand_of_label = np.full(int(seg.labels.max()) + 1, -1, dtype=np.int32)
    cand_of_label[seg.candidates] = np.arange(m, dtype=np.int32)
    objmap = np.full(n * h * w, -1, dtype=np.int32)
    objmap[seg.pixels] = cand_of_label[seg.labels]
    objmap = objmap.reshape(n, h, w)  # [n, H, W] candidate index or -1
    pad = np.pad(objmap, ((0, 0), (1, 1), (1, 1)), constant_values=-1)  # [n, H+2, W+2]
    up, down, left, right = pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:]
    interior = (objmap >= 0) & (up == objmap) & (down == objmap) & (left == objmap) & (right == objmap)
    rows = np.maximum(np.maximum(pad[:, :, :-2], pad[:, :, 1:-1]), pad[:, :, 2:])  # [n, H+2, W] 1×3 max
    grown = np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])  # [n, H, W] 3×3 max
    owner = np.where(objmap >= 0, objmap, grown)  # [n, H, W]
    band = (owner >= 0) & ~interior  # edge band: boundary pixels and the one-pixel rim

    x = images.reshape(-1, 3)  # [n*H*W, 3] uint8
    flat_band = np.flatnonzero(band)
    o_band = owner.ravel()[flat_band]  # [B]
    d = _DIR[seg.color[o_band]]  # [B, 3]
    alpha = ((x[flat_band].astype(np.float32) - _BG) * d).sum(1) / (d * d).sum(1)  # [B]
    alpha = np.clip(alpha, 0.0, 1.0)
    blend = 4.0 * alpha * (1.0 - alpha)  # [B] 0 on a hard edge
    n_band = np.bincount(o_band, minlength=m)
    edges = 1.0 - np.bincount(o_band, weights=blend, minlength=m) / np.maximum(n_band, 1)  # [M]

    flat_in = np.flatnonzero(interior)
    o_in = objmap.ravel()[flat_in]  # [I]
    xi = x[flat_in].astype(np.float64)  # [I, 3] float64: sums of squares of up to 400 pixels of 255²
    n_in = np.bincount(o_in, minlength=m).astype(np.float64)  # [M]
    sums = np.stack([np.bincount(o_in, weights=xi[:, c], minlength=m) for c in range(3)], 1)  # [M, 3]
    sq = np.bincount(o_in, weights=(xi * xi).sum(1), minlength=m)  # [M]
    has = n_in > 0
    mean = sums / np.maximum(n_in, 1.0)[:, None]  # [M, 3]
    var = np.where(has, sq / np.maximum(n_in, 1) - (mean * mean).sum(1), 0.0)  # [M] summed over channels
    hue = np.exp(-((mean - _PAL[seg.color]) ** 2).sum(1) / (2 * SIGMA_HUE**2))
    uniformity = np.exp(-np.maximum(var, 0.0) / (2 * SIGMA_UNIFORMITY**2))
    return np.stack([edges, np.where(has, hue, 0.0), np.where(has, uniformity, 0.0)], 1)


def _background(seg: Segmentation) -> np.ndarray:
    """The background term of every image, `[n]` float64 (module docstring)."""
    n = seg.images.shape[0]
    x = seg.images.reshape(n, -1, 3)  # [n, H*W, 3]
    # exp(−|x − B|² / 2σ²) factorises over channels: three 256-entry tables
    g = _BG_TABLE[0][x[..., 0]] * _BG_TABLE[1][x[..., 1]] * _BG_TABLE[2][x[..., 2]]  # [n, H*W] float32
    out = seg.outside.reshape(n, -1)  # [n, H*W]
    g[~out] = 0.0
    n_out = np.count_nonzero(out, axis=1)  # [n]
    return np.where(n_out > 0, g.sum(1, dtype=np.float64) / np.maximum(n_out, 1), 0.0)


def _ramp(t: float) -> float:
    return min(1.0, max(0.0, 0.5 + t / (2 * RAMP)))


def _score_chunk(images: np.ndarray, plans: Sequence[Plan]) -> RewardResult:
    """Score one chunk of at most `CHUNK` images (module docstring)."""
    seg = segment(images)
    base = score_detections(detections_of(seg), plans)  # `shapes`: strict verdict and details
    n, k = images.shape[0], len(COLOR_NAMES)
    p = shape_likelihood(seg.fill, seg.offset, seg.aspect, seg.side)  # [M, 3]
    objectness = p.max(1)  # [M]
    oq = _object_quality(seg)  # [M, 3]
    weight = np.bincount(seg.image, weights=objectness, minlength=n)  # [n]
    obj_terms = np.stack(
        [np.bincount(seg.image, weights=objectness * oq[:, t], minlength=n) for t in range(3)], 1
    )
    obj_terms = np.where(weight[:, None] > 0, obj_terms / np.maximum(weight, 1e-12)[:, None], 0.0)  # [n, 3]
    background = _background(seg)  # [n]
    quality = (background + obj_terms.sum(1)) / 4.0  # [n]

    cell = seg.image * k + seg.color  # [M] (image, colour)
    soft = np.stack([np.bincount(cell, weights=p[:, s], minlength=n * k) for s in range(3)], 1)
    soft = soft.reshape(n, k, 3)  # [n, K, 3] soft counts k(C S)
    per_shape = soft.sum(1)  # [n, 3] k(S)
    bounds = np.searchsorted(seg.image, np.arange(n + 1))  # seg.image is sorted
    soft_l, per_shape_l, total_l = soft.tolist(), per_shape.tolist(), weight.tolist()
    quality_l, background_l, obj_l = quality.tolist(), background.tolist(), obj_terms.tolist()

    score = np.zeros(n)
    details: list[dict[str, Any]] = []
    for i, plan in enumerate(plans):
        results: dict[str, float] = {}
        named = 0
        for name, kind, c, s, m in plan.requirements:
            kk = per_shape_l[i][s] if c < 0 else soft_l[i][c][s]
            if kind == "count":
                results[name] = max(0.0, 1.0 - abs(kk - m) / m)
            else:
                results[name] = min(kk, m) / m
            named += m if c < 0 else 0
        if plan.relation is not None:
            results[f"relation:{plan.relation[0]}"] = _relation(
                seg, p, plan.relation, int(bounds[i]), int(bounds[i + 1])
            )
        extra = max(0.0, total_l[i] - named)
        content = sum(results.values()) / len(results) / (1.0 + extra)
        score[i] = content * (1.0 + quality_l[i]) / 2.0
        d = base.details[i]
        d["requirements"] = {key: round(v, 4) for key, v in results.items()}
        d["content"] = round(content, 4)
        d["extra"] = round(extra, 4)
        d["quality"] = {
            "background": round(background_l[i], 4),
            "edges": round(obj_l[i][0], 4),
            "hue": round(obj_l[i][1], 4),
            "uniformity": round(obj_l[i][2], 4),
        }
        d["shapes"] = round(float(base.score[i]), 4)
        details.append(d)
    return RewardResult(score=score, strict=base.strict, details=details)


def _relation(
    seg: Segmentation, p: np.ndarray, relation: tuple[str, int, int, int, int], lo: int, hi: int
) -> float:
    """Soft `relation:R` credit of one image whose candidates are `lo:hi` (module docstring)."""
    rel, ca, sa, cb, sb = relation
    ux, uy = _AXIS[rel]
    color_l = seg.color[lo:hi].tolist()
    xy = seg.centroid[lo:hi].tolist()
    pa, pb = p[lo:hi, sa].tolist(), p[lo:hi, sb].tolist()
    best = 0.0
    for a in range(hi - lo):
        if color_l[a] != ca:
            continue
        for b in range(hi - lo):
            if b == a or color_l[b] != cb:
                continue
            dx, dy = xy[b][0] - xy[a][0], xy[b][1] - xy[a][1]
            along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
            value = pa[a] * pb[b] * _ramp(along - POSITION_MARGIN) * _ramp(along - across)
            best = max(best, value)
    return best
