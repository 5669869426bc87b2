"""Turning-point statistics of stored annotations (SPEC §5), for `tpgrpo audit` and the report.

Per iteration: how often each trained step `j` is a turning point (detected, and kept after
balancing), the sign balance of the replacement values `r_agg_j` before and after balancing, and
how large the replacements are against the plain increments `d_j` they replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tpgrpo.storage import read_table

STAT_COLUMNS = ["trajectory_id", "step", "increment", "aggregated", "turning_point", "kept"]


@dataclass(frozen=True)
class TurningPointStats:
    """Turning-point statistics of one iteration's annotations.

    Args:
        iteration (`int`): the iteration.
        trajectories (`int`): N.
        steps (`int`): W, trained steps per trajectory.
        rate_detected (`list[float]`): `[W]`, fraction of trajectories whose step `j` is a detected
            turning point.
        rate_kept (`list[float]`): `[W]`, the same after balancing.
        detected_pos, detected_neg (`int`): detected turning points with `r_agg > 0` / `< 0`.
        kept_pos, kept_neg (`int`): kept turning points by sign.
        replacement_abs (`float | None`): mean `|r_agg_j|` over kept turning points (None: none kept).
        increment_abs_at_tp (`float | None`): mean `|d_j|` over the same steps (what they replace).
        increment_abs (`float`): mean `|d_j|` over every step.
    """

    iteration: int
    trajectories: int
    steps: int
    rate_detected: list[float]
    rate_kept: list[float]
    detected_pos: int
    detected_neg: int
    kept_pos: int
    kept_neg: int
    replacement_abs: float | None
    increment_abs_at_tp: float | None
    increment_abs: float

    @property
    def detected(self) -> int:
        return self.detected_pos + self.detected_neg

    @property
    def kept(self) -> int:
        return self.kept_pos + self.kept_neg

    @property
    def replacement_ratio(self) -> float | None:
        """mean |r_agg| / mean |d| at the kept turning points (None when undefined)."""
        if self.replacement_abs is None or not self.increment_abs_at_tp:
            return None
        return self.replacement_abs / self.increment_abs_at_tp


def turning_point_stats(columns: Mapping[str, Any], iteration: int) -> TurningPointStats:
    """Statistics from the columns of one `annotations` dataset (see `STAT_COLUMNS`).

    Args:
        columns (`Mapping[str, array-like]`): one row per (trajectory, step).
        iteration (`int`): recorded in the result.
    """
    step = np.asarray(columns["step"], dtype=np.int64)  # [N*W]
    d = np.asarray(columns["increment"], dtype=np.float64)  # [N*W]
    r_agg = np.asarray(columns["aggregated"], dtype=np.float64)  # [N*W]
    tp = np.asarray(columns["turning_point"], dtype=bool)  # [N*W]
    kept = np.asarray(columns["kept"], dtype=bool)  # [N*W]
    w = int(step.max()) + 1 if step.size else 0
    n = len(set(np.asarray(columns["trajectory_id"]).tolist()))
    per_step = [(step == j) for j in range(w)]
    rate_detected = [float(tp[m].mean()) if m.any() else 0.0 for m in per_step]
    rate_kept = [float(kept[m].mean()) if m.any() else 0.0 for m in per_step]
    return TurningPointStats(
        iteration=iteration,
        trajectories=n,
        steps=w,
        rate_detected=rate_detected,
        rate_kept=rate_kept,
        detected_pos=int((tp & (r_agg > 0)).sum()),
        detected_neg=int((tp & (r_agg < 0)).sum()),
        kept_pos=int((kept & (r_agg > 0)).sum()),
        kept_neg=int((kept & (r_agg < 0)).sum()),
        replacement_abs=float(np.abs(r_agg[kept]).mean()) if kept.any() else None,
        increment_abs_at_tp=float(np.abs(d[kept]).mean()) if kept.any() else None,
        increment_abs=float(np.abs(d).mean()) if d.size else 0.0,
    )


def read_turning_point_stats(
    uri: str, iteration: int, storage_options: Mapping[str, Any] | None = None
) -> TurningPointStats:
    """`turning_point_stats` of the annotations dataset at `uri`."""
    table = read_table(uri, "annotations", columns=STAT_COLUMNS, storage_options=storage_options)
    return turning_point_stats({c: table.column(c).to_numpy() for c in STAT_COLUMNS}, iteration)


def format_turning_points(stats: list[TurningPointStats], title: str) -> str:
    """Plain aligned text: per iteration, rates by step, sign balance, replacement magnitude."""
    lines = [title]
    for s in stats:
        lines.append("")
        lines.append(f"iteration {s.iteration}: {s.trajectories} trajectories × {s.steps} trained steps")
        lines.append(f"  {'step':>4}  {'detected':>8}  {'kept':>6}")
        for j in range(s.steps):
            lines.append(f"  {j:>4}  {s.rate_detected[j]:>8.3f}  {s.rate_kept[j]:>6.3f}")
        total = max(1, s.trajectories * s.steps)
        lines.append(
            f"  rate      detected {s.detected / total:.3f} ({s.detected})  "
            f"kept {s.kept / total:.3f} ({s.kept})"
        )
        lines.append(
            f"  signs     detected +{s.detected_pos}/-{s.detected_neg}  kept +{s.kept_pos}/-{s.kept_neg}"
        )
        if s.replacement_abs is None:
            lines.append(f"  magnitude no kept turning points; mean |d| {s.increment_abs:.4g}")
        else:
            ratio = f" (x{s.replacement_ratio:.2f})" if s.replacement_ratio is not None else ""
            lines.append(
                f"  magnitude mean |r_agg| {s.replacement_abs:.4g} vs |d| {s.increment_abs_at_tp:.4g} "
                f"at kept turning points{ratio}; mean |d| all steps {s.increment_abs:.4g}"
            )
    return "\n".join(lines)
