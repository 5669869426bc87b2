"""The `shapes` reward: mini-GenEval on the synthetic shapes world.

Each prompt is parsed back into its `PromptSpec` (`tpgrpo.world.prompts.parse`; text outside the
grammar raises `UserError`), each image goes through the detector
(`tpgrpo.rewards.shapes_detector`), and the spec's requirements are checked against the detected
objects (recognised shapes only; blobs count for nothing). With `k(S)` the number of detected
objects of shape S and `k(C S)` those that also have colour C:

| task | requirements (each scores in [0, 1]) |
|---|---|
| single_object | `present:S` = [k(S) ≥ 1] |
| counting | `count:S` = max(0, 1 − abs(k(S) − n) / n); with a colour also `count:C S` likewise on k(C S) |
| colors | `present:S`, `color:C S` = [k(C S) ≥ 1] |
| two_object | `present:S1`, `present:S2` |
| color_attr | `present:S` = min(k(S), m) / m per shape S named m times; `color:C S` per object |
| position | as color_attr, plus `relation:R` = [some detected A, B satisfy `A R B`] (`relation_holds`) |

The score is the mean of the image's requirements (GenEval-style partial credit), `strict` is
"all requirements are 1" (GenEval's correct/incorrect: exact count for counting, presence,
colour and relation otherwise). Extra objects are not penalised except by `counting`'s exact
count of the named shape, as in GenEval. Ground-truth renders of `tpgrpo.world.scenes` score 1;
noise scores 0.

`details` per image (JSON-able): `task`, `requirements` {name: score}, `objects` (detected
shape, colour, centroid `[x, y]` and area in the 64×64 frame), `blobs` (large components of no
recognised shape) and the quality figures `background_dev`, `stray_frac`, `specks` (see the
detector; they do not enter the score, they expose artefacts RL may use to hack the detector).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.rewards.base import RewardResult, check_batch
from tpgrpo.rewards.shapes_detector import COLOR_NAMES, Detections, detect, quality
from tpgrpo.world.palette import SHAPES
from tpgrpo.world.prompts import parse
from tpgrpo.world.relations import relation_holds

__all__ = ["Plan", "ShapesReward", "quality", "requirement_plan", "score_detections"]

# a requirement: (name, kind, colour index or -1 for any colour, shape index, target count n)
# kinds: "present" and "color" score min(k, n) / n, "count" scores max(0, 1 - |k - n| / n)
Requirement = tuple[str, str, int, int, int]


@dataclass(frozen=True)
class Plan:
    """What to check for one prompt.

    Args:
        task (`str`): the prompt's task.
        requirements (`tuple[Requirement, ...]`): `(name, kind, colour or -1, shape, count)`.
        relation (`tuple[str, int, int, int, int] | None`): `(relation, colour A, shape A,
            colour B, shape B)` for position prompts.
    """

    task: str
    requirements: tuple[Requirement, ...]
    relation: tuple[str, int, int, int, int] | None = None


class ShapesReward:
    """Mini-GenEval detector reward of the shapes world (see the module docstring)."""

    key = "shapes"
    version = "1"

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score images against their prompts.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images of any size (thresholds are
                defined at 64×64 and rescaled).
            prompts (`Sequence[str]`): `N` prompts of the shapes-world grammar.

        Returns:
            `RewardResult`: partial credit `[N]` in [0, 1], strict `[N]` bool, details.

        Raises:
            `UserError`: bad images or a prompt outside the grammar.
        """
        check_batch(images, prompts)
        plans = [requirement_plan(p) for p in prompts]  # parses every prompt before any work
        return score_detections(detect(images), plans)


@functools.lru_cache(maxsize=65536)
def requirement_plan(prompt: str) -> Plan:
    """The requirements of a prompt (module docstring's table), cached.

    Args:
        prompt (`str`): a prompt of the grammar.

    Returns:
        `Plan`.
    """
    spec = parse(prompt)
    reqs: list[Requirement] = []
    if spec.task == "counting":
        (o,) = spec.objects
        s = SHAPES.index(o.shape)
        reqs.append((f"count:{o.shape}", "count", -1, s, o.count))
        if o.color is not None:
            reqs.append((f"count:{o.color} {o.shape}", "count", COLOR_NAMES.index(o.color), s, o.count))
        return Plan(spec.task, tuple(reqs))
    for shape, m in Counter(o.shape for o in spec.objects).items():
        reqs.append((f"present:{shape}", "present", -1, SHAPES.index(shape), m))
    idx = [(_color_index(o.color), SHAPES.index(o.shape)) for o in spec.objects]
    for o, (c, s) in zip(spec.objects, idx, strict=True):
        if o.color is not None:
            reqs.append((f"color:{o.color} {o.shape}", "color", c, s, 1))
    relation = None
    if spec.relation is not None:
        (ca, sa), (cb, sb) = idx
        relation = (spec.relation, ca, sa, cb, sb)
    return Plan(spec.task, tuple(reqs), relation)


def _color_index(color: str | None) -> int:
    return -1 if color is None else COLOR_NAMES.index(color)


def score_detections(det: Detections, plans: Sequence[Plan]) -> RewardResult:
    """Check every image's requirements against its detections.

    Args:
        det (`Detections`): the batch's detections (`N` images).
        plans (`Sequence[Plan]`): `N` results of `requirement_plan`.

    Returns:
        `RewardResult`.
    """
    n = det.n_images
    if len(plans) != n:
        raise UserError(f"{len(plans)} prompts for {n} images")
    ok = det.shape >= 0  # recognised objects
    counts = np.zeros((n, len(COLOR_NAMES), len(SHAPES)), dtype=np.int64)  # [N, K, 3]
    np.add.at(counts, (det.image[ok], det.color[ok], det.shape[ok]), 1)
    per_shape = counts.sum(1)  # [N, 3]
    blobs = np.bincount(det.image[~ok], minlength=n)  # [N]
    bounds = np.searchsorted(det.image, np.arange(n + 1))  # det.image is sorted
    color_l, shape_l = det.color.tolist(), det.shape.tolist()
    cx_l, cy_l, area_l = det.centroid[:, 0].tolist(), det.centroid[:, 1].tolist(), det.area.tolist()
    counts_l, per_shape_l = counts.tolist(), per_shape.tolist()
    bg_l, stray_l, specks_l = det.background_dev.tolist(), det.stray_frac.tolist(), det.specks.tolist()

    score = np.zeros(n)
    strict = np.zeros(n, dtype=bool)
    details: list[dict[str, Any]] = []
    for i, plan in enumerate(plans):
        found = [j for j in range(int(bounds[i]), int(bounds[i + 1])) if shape_l[j] >= 0]
        results: dict[str, float] = {}
        for name, kind, c, s, m in plan.requirements:
            k = per_shape_l[i][s] if c < 0 else counts_l[i][c][s]
            if kind == "count":
                results[name] = max(0.0, 1.0 - abs(k - m) / m)
            else:
                results[name] = min(k, m) / m
        if plan.relation is not None:
            relation, ca, sa, cb, sb = plan.relation
            a = [(cx_l[j], cy_l[j]) for j in found if color_l[j] == ca and shape_l[j] == sa]
            b = [(cx_l[j], cy_l[j]) for j in found if color_l[j] == cb and shape_l[j] == sb]
            holds = bool(a and b and relation_holds(relation, np.array(a)[:, None], np.array(b)[None]).any())
            results[f"relation:{relation}"] = float(holds)
        values = list(results.values())
        score[i] = sum(values) / len(values)
        strict[i] = all(v == 1.0 for v in values)
        details.append(
            {
                "task": plan.task,
                "requirements": {k: round(v, 4) for k, v in results.items()},
                "objects": [
                    {
                        "shape": SHAPES[shape_l[j]],
                        "color": COLOR_NAMES[color_l[j]],
                        "centroid": [round(cx_l[j], 2), round(cy_l[j], 2)],
                        "area": round(area_l[j], 1),
                    }
                    for j in found
                ],
                "blobs": int(blobs[i]),
                "background_dev": round(bg_l[i], 4),
                "stray_frac": round(stray_l[i], 4),
                "specks": int(specks_l[i]),
            }
        )
    return RewardResult(score=score, strict=strict, details=details)
