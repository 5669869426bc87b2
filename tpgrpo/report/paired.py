"""What a checkpoint gained over another: paired differences of two evaluations of one run.

Two evaluations of the same run, prompts, replicates and steps sample every image from the same
initial noise (`trajectory_seed(seed, prompt row, replicate)`), so image `i` at checkpoint 0 and
image `i` at checkpoint K differ only by the weights. The gain is the mean of the per-image
differences. Images of one prompt are not independent (same prompt, related noise draws), so the
95 % interval treats prompts as the units: the per-prompt mean differences, with a Student t
interval over prompts. That interval is wider than one over images, and honest about how many
independent prompts the evaluation has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tpgrpo.errors import DataError

EVAL_COLUMNS = ["prompt_id", "seed", "task", "score", "strict"]


@dataclass(frozen=True)
class PairedGain:
    """The paired change of one metric between two evaluations.

    Args:
        metric (`str`): `score` (mean reward) or `strict` (accuracy).
        base (`float`): the metric's mean at the baseline checkpoint.
        value (`float`): its mean at the other checkpoint, on the same images.
        gain (`float`): `value − base`, the mean per-image difference.
        half_width (`float`): half-width of the 95 % t interval over prompts (NaN for one prompt).
        images (`int`): paired images.
        prompts (`int`): distinct prompts (the interval's units).
    """

    metric: str
    base: float
    value: float
    gain: float
    half_width: float
    images: int
    prompts: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the 95 % interval lies entirely on one side of zero."""
        return bool(abs(self.gain) > self.half_width)

    def describe(self) -> str:
        """E.g. `score 0.5550 → 0.5861: +0.0311 ± 0.0120 (95 % CI excludes 0)`."""
        verdict = "excludes 0" if self.excludes_zero else "includes 0"
        return (
            f"{self.metric} {self.base:.4f} → {self.value:.4f}: {self.gain:+.4f} ± {self.half_width:.4f} "
            f"(95 % CI {verdict})"
        )


def t_half_width(values: np.ndarray) -> float:
    """Half-width of the 95 % Student t interval of the mean of `values` (NaN below 2 values)."""
    from scipy import stats

    n = values.size
    if n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def paired_gain(
    base: Mapping[str, Sequence[Any]], other: Mapping[str, Sequence[Any]], metric: str
) -> PairedGain:
    """The paired change of `metric` from `base` to `other` (columns of two `eval` datasets).

    Args:
        base, other: columns `prompt_id`, `seed` and `metric` (`score` or `strict`).
        metric: the column to compare.

    Raises:
        DataError: the evaluations are not of the same images (other prompts, replicates or seed),
            or the metric is missing (a reward without strict accuracy).
    """
    a, b = _by_image(base, metric), _by_image(other, metric)
    if a.keys() != b.keys():
        missing, extra = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        raise DataError(
            f"the two evaluations are not of the same images ({missing} only in the baseline, {extra} "
            "only in the other): evaluate both checkpoints with the same --prompts, --replicates and "
            "--steps"
        )
    keys = sorted(a)
    x = np.array([a[k] for k in keys], dtype=np.float64)  # [images]
    y = np.array([b[k] for k in keys], dtype=np.float64)  # [images]
    prompts = np.array([k[0] for k in keys])
    ids, inverse = np.unique(prompts, return_inverse=True)
    per_prompt = np.bincount(inverse, weights=y - x) / np.bincount(inverse)  # [prompts]
    return PairedGain(
        metric=metric,
        base=float(x.mean()),
        value=float(y.mean()),
        gain=float((y - x).mean()),
        half_width=t_half_width(per_prompt),
        images=len(keys),
        prompts=len(ids),
    )


def _by_image(cols: Mapping[str, Sequence[Any]], metric: str) -> dict[tuple[str, int], float]:
    values = cols.get(metric)
    if values is None or any(v is None for v in values):
        raise DataError(f"the evaluation has no {metric!r} for every image (its reward does not give one)")
    out = {
        (str(p), int(s)): float(v) for p, s, v in zip(cols["prompt_id"], cols["seed"], values, strict=True)
    }
    if len(out) != len(values):
        raise DataError("an evaluation holds the same (prompt, seed) image twice; re-run it with --force")
    return out


def read_eval(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, list[Any]]:
    """The columns of a finished `eval` dataset that `paired_gain` needs."""
    from tpgrpo.storage import read_table

    table = read_table(uri, "eval", columns=EVAL_COLUMNS, storage_options=storage_options)
    return {c: table.column(c).to_pylist() for c in EVAL_COLUMNS}


def gains(base: Mapping[str, Sequence[Any]], other: Mapping[str, Sequence[Any]]) -> list[PairedGain]:
    """The paired gains in mean score and, where the reward gives one, strict accuracy."""
    out = [paired_gain(base, other, "score")]
    if all(v is not None for v in base["strict"]) and all(v is not None for v in other["strict"]):
        out.append(paired_gain(base, other, "strict"))
    return out
