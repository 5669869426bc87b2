"""The detector of the shapes world: colour masks, connected components, shape from fill ratio.

Per batch of RGB images `[N, H, W, 3]` (vectorised over the batch; areas are given in the 64×64
frame of `tpgrpo.world.scenes` and rescaled to other sizes):

1. **Pixel classes** (`color_table`, one lookup per pixel). Background if within
   `BACKGROUND_TOLERANCE` (60) of `BACKGROUND`; else colour C if the pixel lies within
   `COLOR_TOLERANCE` (48) of the segment from the background to C and is at least half-way
   along it (a blend of C with the background that is ≥ 50 % C); else "stray". The 50 % rule
   keeps a blurred shape's outline where the sharp one was, so a decoder's soft edges do not
   change its fill ratio. Palette colours are ≥ 139 apart, so the classes are well separated.
2. **Components.** 8-connected components of each colour's mask (one `ndimage.label` call over
   the whole batch, connectivity only within an image and a colour).
3. **Objects.** A component of at least `MIN_OBJECT_AREA` (40 px; the smallest rendered object
   has 91) is a candidate. Its fill ratio `area / (box width · box height)` and the offset of its
   centroid below the box centre (over the box height) give the shape (`shape_of`): triangle if
   offset ≥ 0.07 and 0.38 ≤ fill < 0.8 (an upright triangle: ≈ +0.14, fill 0.50–0.54); else
   square if fill ≥ 0.88 (1.0); circle if fill ≥ 0.62 (0.78–0.81); else — or if the box aspect
   ratio exceeds `MAX_ASPECT` (1.6) — a "blob", which is no object. Centroid = mean pixel
   position. Measured on ground truth blurred with σ = 2 px, every shape is still recognised.
4. **Quality**, per image, measured outside the recognised objects grown by a one-pixel rim (so
   a soft edge does not count against an object):
   - `background_dev`: mean absolute deviation of those pixels from `BACKGROUND`, averaged over
     channels and divided by 255 (0 = perfectly flat background);
   - `stray_frac`: fraction of all the image's pixels that lie there and are not background
     (specks, blobs, smears, tints beyond the tolerance);
   - `specks`: number of 8-connected components of such pixels smaller than `MIN_OBJECT_AREA`.
   A clean render scores 0 on all three.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tpgrpo.world.palette import BACKGROUND, COLORS

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
BACKGROUND_TOLERANCE = 60.0
"""Maximum RGB distance from `BACKGROUND` of a background pixel."""
COLOR_TOLERANCE = 48.0
"""Maximum RGB distance of a colour pixel from its colour's background-to-colour segment."""
MIN_OBJECT_AREA = 40.0
"""Minimum area (pixels of the 64×64 frame) of an object; smaller components are specks."""
SQUARE_FILL, CIRCLE_FILL = 0.88, 0.62
"""Lower fill-ratio bounds of square and circle."""
TRIANGLE_FILL, TRIANGLE_OFFSET = (0.38, 0.8), 0.07
"""Fill-ratio range and minimum centroid offset (below the box centre, over box height) of a triangle."""
MAX_ASPECT = 1.6
"""Maximum bbox aspect ratio (long side / short side) of an object."""
BG_CLASS, STRAY_CLASS = 0, len(COLORS) + 1
"""Pixel class codes: 0 background, 1..K the colours in `COLOR_NAMES` order, K+1 stray."""
CHUNK = 256
"""Images processed at once (bounds memory)."""

_REFS = np.array([BACKGROUND, *COLORS.values()], dtype=np.int64)  # [K+1, 3]
_ABS_DEV = np.abs(np.arange(256)[None, :] - _REFS[0][:, None]).astype(np.uint16)  # [3, 256] |v - BG[c]|
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True  # 8-connectivity within a plane, none across planes
_CANVAS = 64


@dataclass(frozen=True)
class Detections:
    """Objects and quality figures of a batch of `N` images (`M` objects in all).

    Args:
        n_images (`int`): `N`.
        image (`np.ndarray` `[M]` int64): image index of each object.
        color (`np.ndarray` `[M]` int64): index into `COLOR_NAMES`.
        shape (`np.ndarray` `[M]` int64): index into `SHAPES`; -1 for a blob.
        area (`np.ndarray` `[M]` float64): pixels, in the 64×64 frame.
        centroid (`np.ndarray` `[M, 2]` float64): `(x, y)` in the 64×64 frame.
        fill (`np.ndarray` `[M]` float64): area over bounding-box area.
        background_dev, stray_frac (`np.ndarray` `[N]` float64), specks (`np.ndarray` `[N]`
            int64): the quality figures of the module docstring.
    """

    n_images: int
    image: np.ndarray
    color: np.ndarray
    shape: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    fill: np.ndarray
    background_dev: np.ndarray
    stray_frac: np.ndarray
    specks: np.ndarray

    def quality(self) -> dict[str, np.ndarray]:
        """`{"background_dev": [N], "stray_frac": [N], "specks": [N]}`."""
        return {"background_dev": self.background_dev, "stray_frac": self.stray_frac, "specks": self.specks}


def classify_pixels(images: np.ndarray) -> np.ndarray:
    """Pixel classes of images, by lookup in `color_table()` (6 bits per channel).

    Args:
        images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.

    Returns:
        `np.ndarray` uint8 `[N, H, W]`: `BG_CLASS`, 1..K (colours) or `STRAY_CLASS`.
    """
    q = images >> 2  # [N, H, W, 3] 6-bit channels
    idx = (q[..., 0].astype(np.int32) << 12) | (q[..., 1].astype(np.int32) << 6) | q[..., 2]
    return color_table()[idx]  # [N, H, W]


@functools.cache
def color_table() -> np.ndarray:
    """The class of every RGB cell of side 4, `[64**3]` uint8, judged at the cell's centre.

    With `bg` the background and `c` a colour, a pixel `x` is background if `|x - bg| ≤
    BACKGROUND_TOLERANCE`; otherwise it belongs to the colour whose segment `bg + a (c - bg)`,
    `a` clipped to `[0.5, 1.3]`, passes nearest to it, if within `COLOR_TOLERANCE`; otherwise it is
    stray. So a blend of an object with the background joins the object when it is at least half
    object colour, the rule that keeps a blurred shape's outline where a sharp one would be.
    """
    bg = np.array(BACKGROUND, dtype=np.float64)
    d = np.array(list(COLORS.values()), dtype=np.float64) - bg  # [K, 3] segment directions
    v = np.arange(64) * 4 + 1.5  # cell centres of one channel
    x = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 3) - bg  # [64**3, 3]
    a = (x @ d.T) / (d * d).sum(1)  # [Q, K] position of the projection along each segment
    res2 = ((x[:, None, :] - np.minimum(a, 1.3)[:, :, None] * d[None]) ** 2).sum(-1)  # [Q, K]
    res2[a < 0.5] = np.inf  # less than half colour: not that colour
    table = np.where(res2.min(1) <= COLOR_TOLERANCE**2, res2.argmin(1) + 1, STRAY_CLASS).astype(np.uint8)
    table[(x * x).sum(1) <= BACKGROUND_TOLERANCE**2] = BG_CLASS
    return table


def detect(images: np.ndarray) -> Detections:
    """Detect the objects of a batch and measure its quality (see the module docstring).

    Args:
        images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.

    Returns:
        `Detections`.
    """
    parts = [_detect_chunk(images[i : i + CHUNK]) for i in range(0, images.shape[0], CHUNK)]
    if not parts:
        parts = [_detect_chunk(images)]
    offsets = np.cumsum([0] + [p.n_images for p in parts[:-1]])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    return Detections(
        n_images=int(images.shape[0]),
        image=np.concatenate([p.image + o for p, o in zip(parts, offsets, strict=True)]),
        color=cat("color"),
        shape=cat("shape"),
        area=cat("area"),
        centroid=np.concatenate([p.centroid for p in parts]).reshape(-1, 2),
        fill=cat("fill"),
        background_dev=cat("background_dev"),
        stray_frac=cat("stray_frac"),
        specks=cat("specks"),
    )


def quality(images: np.ndarray) -> dict[str, np.ndarray]:
    """Quality figures of a batch, for evaluation summaries.

    Args:
        images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.

    Returns:
        `dict[str, np.ndarray]`: `background_dev` `[N]` float64 (0–1), `stray_frac` `[N]` float64
        (0–1), `specks` `[N]` int64 (see the module docstring).
    """
    return detect(images).quality()


@dataclass(frozen=True)
class Segmentation:
    """The detector's intermediate results for one chunk of `n` images of `H × W` pixels, for
    rewards that measure more than `Detections` holds (`tpgrpo.rewards.shapes_pref`).

    Args:
        images (`np.ndarray` uint8 `[n, H, W, 3]`): the chunk.
        cls (`np.ndarray` uint8 `[n, H, W]`): pixel classes (`classify_pixels`).
        pixels (`np.ndarray` int64 `[P]`): flat indices into `[n * H * W]` of the coloured pixels.
        labels (`np.ndarray` int64 `[P]`): their component labels (1..L).
        candidates (`np.ndarray` int64 `[M]`): labels of the components of at least
            `MIN_OBJECT_AREA` (recognised objects and blobs), ascending.
        image, color, shape (`np.ndarray` int64 `[M]`): image, colour and shape (-1: blob) of each.
        area (`np.ndarray` float64 `[M]`): pixels, in the 64×64 frame.
        centroid (`np.ndarray` float64 `[M, 2]`): `(x, y)` in the 64×64 frame.
        fill, offset, aspect (`np.ndarray` float64 `[M]`): the box features of `shape_of`.
        side (`np.ndarray` float64 `[M]`): the longer box side, in pixels of the 64×64 frame.
        outside (`np.ndarray` bool `[n, H, W]`): pixels outside the recognised objects grown by a
            one-pixel rim (where the quality figures are measured).
    """

    images: np.ndarray
    cls: np.ndarray
    pixels: np.ndarray
    labels: np.ndarray
    candidates: np.ndarray
    image: np.ndarray
    color: np.ndarray
    shape: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    fill: np.ndarray
    offset: np.ndarray
    aspect: np.ndarray
    side: np.ndarray
    outside: np.ndarray


def segment(images: np.ndarray) -> Segmentation:
    """Steps 1–3 of the module docstring and the quality mask of step 4, for one chunk.

    Args:
        images (`np.ndarray` uint8 `[n, H, W, 3]`): at most `CHUNK` images (memory grows with n).

    Returns:
        `Segmentation`.
    """
    n, h, w, _ = images.shape
    k = len(COLORS)
    px_per_unit = (h * w) / _CANVAS**2  # image pixels per pixel of the 64×64 frame
    min_area = MIN_OBJECT_AREA * px_per_unit
    cls = classify_pixels(images)  # [n, H, W]

    # colour masks of every (image, colour) plane, labelled in one call
    onehot = cls[:, None] == np.arange(1, k + 1, dtype=np.uint8)[None, :, None, None]  # [n, K, H, W]
    lab, n_lab = ndimage.label(onehot.reshape(n * k, h, w), structure=_PLANE_8)  # [n*K, H, W]
    cls_flat = cls.ravel()
    nz_img = np.flatnonzero((cls_flat != BG_CLASS) & (cls_flat != STRAY_CLASS))  # coloured pixels
    img_nz, pix_nz = np.divmod(nz_img, h * w)
    lab_nz = lab.ravel()[(img_nz * k + cls_flat[nz_img].astype(np.int64) - 1) * (h * w) + pix_nz]  # [P] ≥ 1
    area, centroid_px, corner, size = _label_stats(lab_nz, nz_img % (h * w), w, n_lab)  # [L+1], [L+1, 2] …
    plane = np.zeros(n_lab + 1, dtype=np.int64)
    plane[lab_nz] = nz_img // (h * w) * k + cls_flat[nz_img] - 1  # (image, colour) of each label

    big = np.flatnonzero(area[1:] >= min_area) + 1  # [M] labels of candidate objects
    bw, bh = size[big, 0], size[big, 1]  # [M], [M] box width and height
    fill = area[big] / (bw * bh)  # [M]
    offset = (centroid_px[big, 1] - (corner[big, 1] + bh / 2)) / bh  # [M] centroid below box centre
    aspect = np.maximum(bw, bh) / np.minimum(bw, bh)  # [M]
    shape = shape_of(fill, offset, aspect)  # [M]
    centroid = centroid_px[big] * np.array([_CANVAS / w, _CANVAS / h])  # [M, 2] in the 64-px frame

    # quality mask: everything outside the objects grown by a one-pixel rim
    is_obj = np.zeros(n_lab + 1, dtype=bool)
    is_obj[big[shape >= 0]] = True
    obj = np.zeros(n * h * w, dtype=bool)
    obj[nz_img[is_obj[lab_nz]]] = True
    return Segmentation(
        images=images,
        cls=cls,
        pixels=nz_img,
        labels=lab_nz,
        candidates=big,
        image=plane[big] // k,
        color=plane[big] % k,
        shape=shape.astype(np.int64),
        area=area[big] / px_per_unit,
        centroid=centroid.reshape(-1, 2),
        fill=fill.astype(np.float64),
        offset=offset.astype(np.float64),
        aspect=aspect.astype(np.float64),
        side=np.maximum(bw * (_CANVAS / w), bh * (_CANVAS / h)),
        outside=~_dilate(obj.reshape(n, h, w)),
    )


def detections_of(seg: Segmentation) -> Detections:
    """The `Detections` of one chunk's segmentation (step 4's quality figures measured here)."""
    images, cls, outside = seg.images, seg.cls, seg.outside
    n, h, w, _ = images.shape
    min_area = MIN_OBJECT_AREA * (h * w) / _CANVAS**2
    dev = _ABS_DEV[0][images[..., 0]] + _ABS_DEV[1][images[..., 1]] + _ABS_DEV[2][images[..., 2]]  # [n, H, W]
    dev[~outside] = 0
    n_out = np.count_nonzero(outside, axis=(1, 2))  # [n]
    background_dev = dev.sum((1, 2), dtype=np.int64) / (3 * 255 * np.maximum(n_out, 1))
    stray = outside & (cls != BG_CLASS)  # [n, H, W]
    stray_frac = np.count_nonzero(stray, axis=(1, 2)) / (h * w)
    specks = _count_small_components(stray, min_area)
    return Detections(
        n_images=n,
        image=seg.image,
        color=seg.color,
        shape=seg.shape,
        area=seg.area,
        centroid=seg.centroid,
        fill=seg.fill,
        background_dev=background_dev.astype(np.float64),
        stray_frac=stray_frac.astype(np.float64),
        specks=specks,
    )


def _detect_chunk(images: np.ndarray) -> Detections:
    return detections_of(segment(images))


def _label_stats(
    labels: np.ndarray, pix: np.ndarray, w: int, n_lab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Area, centroid and bounding box of every label from a list of its pixels.

    Args:
        labels (`np.ndarray` `[P]`): label (1..n_lab) of each pixel.
        pix (`np.ndarray` `[P]`): the pixel's flat index `y * w + x` within its image.
        w (`int`): image width.
        n_lab (`int`): number of labels.

    Returns:
        area `[L+1]` int64, centroid `[L+1, 2]` float64 `(x, y)` of pixel centres, box corner
        `[L+1, 2]` int64 `(x0, y0)` and box size `[L+1, 2]` int64 `(width, height)`; index 0 and
        labels without pixels have area 0, centroid nan, box 0.
    """
    y, x = np.divmod(pix, w)  # [P], [P]
    area = np.bincount(labels, minlength=n_lab + 1)  # [L+1]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(labels, weights=x + 0.5, minlength=n_lab + 1) / area
        cy = np.bincount(labels, weights=y + 0.5, minlength=n_lab + 1) / area
    corner = np.zeros((n_lab + 1, 2), dtype=np.int64)
    size = np.zeros((n_lab + 1, 2), dtype=np.int64)
    present = np.flatnonzero(area)  # labels with pixels, ascending
    if present.size:
        order = np.argsort(labels, kind="stable")  # runs of equal labels
        starts = np.concatenate([[0], np.cumsum(area[present])[:-1]])
        for axis, v in enumerate((x[order], y[order])):
            lo, hi = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
            corner[present, axis], size[present, axis] = lo, hi - lo + 1
    return area, np.stack([cx, cy], axis=1), corner, size


def shape_of(fill: np.ndarray, offset: np.ndarray, aspect: np.ndarray) -> np.ndarray:
    """Shape index (into `SHAPES`; -1 for a blob) from a component's box features.

    Args:
        fill (`np.ndarray` `[M]`): area / box area (square 1, circle ≈ 0.79, triangle ≈ 0.52).
        offset (`np.ndarray` `[M]`): (centroid y − box centre y) / box height (an upright
            triangle ≈ +0.14 (+1/6 for a perfect one), square and circle ≈ 0).
        aspect (`np.ndarray` `[M]`): long box side / short box side.

    Returns:
        `np.ndarray` `[M]` int64.
    """
    triangle = (offset >= TRIANGLE_OFFSET) & (fill >= TRIANGLE_FILL[0]) & (fill < TRIANGLE_FILL[1])
    shape = np.where(fill >= SQUARE_FILL, 1, np.where(fill >= CIRCLE_FILL, 0, -1))
    shape = np.where(triangle, 2, shape)
    shape[aspect > MAX_ASPECT] = -1
    return shape.astype(np.int64)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 binary dilation of `[n, H, W]` masks, within each image (separable: rows, then columns)."""
    rows = mask.copy()
    rows[:, 1:] |= mask[:, :-1]
    rows[:, :-1] |= mask[:, 1:]
    out = rows.copy()
    out[:, :, 1:] |= rows[:, :, :-1]
    out[:, :, :-1] |= rows[:, :, 1:]
    return out


def _count_small_components(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Per image, the number of 8-connected components of `mask` `[n, H, W]` below `max_area` px."""
    lab, n_lab = ndimage.label(mask, structure=_PLANE_8)
    flat = lab.ravel()
    nz = np.flatnonzero(flat)
    area = np.bincount(flat[nz], minlength=n_lab + 1)  # [L+1]
    image = np.zeros(n_lab + 1, dtype=np.int64)
    image[flat[nz]] = nz // (mask.shape[1] * mask.shape[2])
    small = np.flatnonzero(area[1:] < max_area) + 1
    return np.bincount(image[small], minlength=mask.shape[0]).astype(np.int64)
