"""The `weighted` reward: a weighted sum of other rewards.

    {"name": "weighted", "components": [{"spec": "shapes", "weight": 0.7},
                                        {"spec": {"name": "jpeg", "scale": 500}, "weight": 0.3}]}

With component scores `s_c [N]` and weights `w_c` (finite, any sign, not all zero):

    score = Σ_c w_c · s_c                       (no renormalisation: weights are used as given)
    strict = AND_c strict_c                     only when every component has a strict verdict

`details` per image: `{"components": {<component key>: {"score", "weight", "strict"?, "details"}}}`.
Component keys must differ (give a component spec its own `key` when two would share one).
`version` lists the components' keys, versions and weights, so changing any of them changes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.rewards.base import Reward, RewardResult, check_batch

__all__ = ["WeightedReward"]


class WeightedReward:
    """Weighted sum of component rewards (see the module docstring).

    Args:
        components (`list[dict]`): `{"spec": <reward spec>, "weight": <number>}` each, at least one.
        key (`str`): storage key.

    Raises:
        `UserError`: no components, a malformed entry, a weight that is not a finite number, all
            weights zero, a component spec that does not build, or two components with one key.
    """

    def __init__(self, components: Sequence[Mapping[str, Any]], key: str = "weighted") -> None:
        from tpgrpo.rewards import make_reward

        if (
            isinstance(components, str | bytes | Mapping)
            or not isinstance(components, Sequence)
            or not components
        ):
            raise UserError(
                "weighted reward: components must be a non-empty list of {'spec': ..., 'weight': ...}, "
                f"got {components!r:.120}"
            )
        problems: list[str] = []
        specs: list[tuple[Any, float]] = []
        for i, entry in enumerate(components):
            if not isinstance(entry, Mapping) or set(entry) != {"spec", "weight"}:
                problems.append(
                    f"components[{i}] must have exactly the keys 'spec' and 'weight', got {entry!r:.80}"
                )
                continue
            weight = entry["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                problems.append(f"components[{i}].weight must be a finite number, got {weight!r}")
                continue
            specs.append((entry["spec"], float(weight)))
        if not problems and all(w == 0 for _, w in specs):
            problems.append("all weights are 0: the sum would be constant")
        if problems:
            raise UserError("weighted reward: " + "; ".join(problems))
        self.components: list[tuple[Reward, float]] = []
        for i, (spec, weight) in enumerate(specs):
            try:
                self.components.append((make_reward(spec), weight))
            except UserError as e:
                raise UserError(f"weighted reward: components[{i}]: {e}") from e
        keys = [r.key for r, _ in self.components]
        if len(set(keys)) != len(keys):
            raise UserError(
                f"weighted reward: component keys {keys} repeat; give the components distinct 'key's"
            )
        self.key = key
        self.version = "1:" + "+".join(f"{w:g}*{r.key}@{r.version}" for r, w in self.components)

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score with every component and sum.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.
            prompts (`Sequence[str]`): `N` prompts.

        Returns:
            `RewardResult`: the weighted sum `[N]`, the joint strict verdict or None, details.
        """
        check_batch(images, prompts)
        n = images.shape[0]
        results = [(r, w, r.score(images, prompts)) for r, w in self.components]
        score = np.zeros(n)
        for _, w, res in results:
            score += w * res.score  # [N]
        verdicts = [res.strict for _, _, res in results if res.strict is not None]
        strict = np.logical_and.reduce(verdicts) if len(verdicts) == len(results) else None  # [N]
        details: list[dict[str, Any]] = []
        for i in range(n):
            parts: dict[str, Any] = {}
            for r, w, res in results:
                part: dict[str, Any] = {"score": float(res.score[i]), "weight": w}
                if res.strict is not None:
                    part["strict"] = bool(res.strict[i])
                part["details"] = res.details[i]
                parts[r.key] = part
            details.append({"components": parts})
        return RewardResult(score=score, strict=strict, details=details)
