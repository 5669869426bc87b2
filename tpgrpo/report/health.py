"""Learning health of a stored run: how each trained step shares the update, and how much signal.

Read from the `updates` rows (per-step gradient norms, clip fractions, advantage statistics; schema
v2, null in runs written before) and the annotations the run trained on (prompt groups whose step
rewards are all equal: zero std, no signal). Two warnings, each naming the fix:

- **one step holds more than half of the squared gradient**: the share of step `j` in an optimizer
  step is `g_j² / Σ_i g_i²` (`g = grad_norm_by_step`); averaged over the run's optimizer steps, a
  step above `GRADIENT_SHARE_LIMIT` takes the update for itself (SPEC §2: a near-deterministic step
  whose exact log-prob gradient scales like 1/std);
- **more than half of the prompt groups have zero std**: averaged over the iterations, a share of
  such groups above `ZERO_STD_LIMIT` means most prompts teach nothing (the base model always or
  never succeeds on them).

Used by `tpgrpo audit health` and `tpgrpo report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

GRADIENT_SHARE_LIMIT = 0.5
"""A trained step holding more than this share of the squared gradient (run mean) is a warning."""
ZERO_STD_LIMIT = 0.5
"""More than this share of prompt groups without reward spread (run mean) is a warning."""


@dataclass
class IterationHealth:
    """One iteration's learning diagnostics (per-step lists are `[W]`; None where not recorded).

    Args:
        iteration (`int`): the iteration.
        optimizer_steps (`int`): its `updates` rows.
        grad_share_by_step: mean over its optimizer steps of `g_j² / Σ_i g_i²` (steps without any
            gradient left out); None when the updates predate per-step diagnostics or had no gradient.
        grad_norm_by_step, clip_frac_by_step, adv_abs_by_step, adv_nonzero_by_step: means over its
            optimizer steps of the `updates` columns of those names.
        zero_std_groups (`float`, *optional*): share of its prompt groups whose step rewards are all
            equal (None without finished annotations).
        grad_shares: `g_j² / Σ_i g_i²` of each of its optimizer steps that had a gradient.
    """

    iteration: int
    optimizer_steps: int = 0
    grad_share_by_step: list[float] | None = None
    grad_norm_by_step: list[float] | None = None
    clip_frac_by_step: list[float] | None = None
    adv_abs_by_step: list[float] | None = None
    adv_nonzero_by_step: list[float] | None = None
    zero_std_groups: float | None = None
    grad_shares: list[list[float]] = field(default_factory=list, repr=False)  # [optimizer steps][W]


@dataclass
class HealthReport:
    """The run's iterations and what is wrong with its learning signal."""

    run_id: str
    iterations: list[IterationHealth]
    warnings: list[str]
    notes: list[str]


def gradient_shares(norms: Sequence[float]) -> list[float] | None:
    """`g_j² / Σ_i g_i²` of one optimizer step's per-step gradient norms (None when all are zero)."""
    sq = np.square(np.asarray(norms, dtype=np.float64))  # [W]
    total = float(sq.sum())
    return (sq / total).tolist() if total > 0 else None


def _mean_lists(lists: Sequence[Sequence[float] | None]) -> list[float] | None:
    """Element-wise mean of equal-length lists (None entries skipped; None if none is left)."""
    kept = [np.asarray(x, dtype=np.float64) for x in lists if x is not None]
    if not kept or len({x.shape for x in kept}) != 1:
        return None
    return np.mean(kept, axis=0).tolist()


def iteration_health(updates: Any, annotations: Any, iteration: int) -> IterationHealth:
    """Diagnostics of one iteration from its `updates` rows and annotations (`pa.Table`s or None).

    Args:
        updates (`pa.Table`, *optional*): the iteration's `updates` rows (any readable version).
        annotations (`pa.Table`, *optional*): columns `trajectory_id`, `group_id`, `step`,
            `step_reward` of the annotations the run trained on.
    """
    from tpgrpo.algorithm import zero_std_groups

    out = IterationHealth(iteration)
    if updates is not None:
        rows = updates.to_pylist()
        out.optimizer_steps = len(rows)
        out.grad_shares = [s for s in (gradient_shares(r["grad_norm_by_step"] or []) for r in rows) if s]
        out.grad_share_by_step = _mean_lists(out.grad_shares)
        for name in ("grad_norm_by_step", "clip_frac_by_step", "adv_abs_by_step", "adv_nonzero_by_step"):
            setattr(out, name, _mean_lists([r[name] for r in rows]))
    if annotations is not None and annotations.num_rows:
        tids = annotations.column("trajectory_id").to_numpy()
        steps = annotations.column("step").to_numpy()
        ids, row = np.unique(tids, return_inverse=True)
        reward = np.zeros((ids.size, int(steps.max()) + 1))  # [N, W]
        reward[row, steps] = annotations.column("step_reward").to_numpy()
        groups = np.zeros(ids.size, dtype=np.int64)  # [N]
        groups[row] = annotations.column("group_id").to_numpy()
        out.zero_std_groups = float(zero_std_groups(reward, groups).mean())
    return out


def health_warnings(iterations: Sequence[IterationHealth]) -> list[str]:
    """The warnings of the module docstring, each with its numbers and the fix."""
    warnings = []
    shares = [s for it in iterations for s in it.grad_shares]
    by_width: dict[int, list[list[float]]] = {}
    for s in shares:
        by_width.setdefault(len(s), []).append(s)
    for width, group in sorted(by_width.items()):
        mean = np.mean(group, axis=0)  # [W]
        j = int(mean.argmax())
        if mean[j] > GRADIENT_SHARE_LIMIT:
            above = sum(1 for s in group if s[j] > GRADIENT_SHARE_LIMIT)
            worst = [
                it.iteration
                for it in iterations
                if it.grad_share_by_step
                and len(it.grad_share_by_step) == width
                and it.grad_share_by_step[j] > GRADIENT_SHARE_LIMIT
            ]
            warnings.append(
                f"trained step {j} holds {mean[j]:.0%} of the squared gradient on average over "
                f"{len(group)} optimizer steps (more than half in {above}; iterations "
                f"{_span(worst)}): the other {width - 1} steps barely train. A near-deterministic step "
                "(step std under SPEC §2's floor 0.05) does this through its 1/std log-prob gradient: "
                "use the default window (sampling.window_size: null), a window without that step, or "
                "sampling.exact_cps_logprob: false"
            )
    zero = [it.zero_std_groups for it in iterations if it.zero_std_groups is not None]
    if zero and float(np.mean(zero)) > ZERO_STD_LIMIT:
        many = [it.iteration for it in iterations if (it.zero_std_groups or 0.0) > ZERO_STD_LIMIT]
        warnings.append(
            f"{np.mean(zero):.0%} of prompt groups had all-equal rewards (zero std: no signal), mean over "
            f"{len(zero)} iterations (more than half in iterations {_span(many)}): the base model always "
            "or never succeeds on most prompts. Use prompts it sometimes solves, a larger "
            "rollout.group_size, or a reward with partial credit"
        )
    return warnings


def _span(iterations: Sequence[int]) -> str:
    """`0–3, 7` for [0, 1, 2, 3, 7]; `none` when empty."""
    out: list[str] = []
    for i in iterations:
        if out and out[-1].split("–")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('–')[0]}–{i}"
        else:
            out.append(str(i))
    return ", ".join(out) or "none"


def read_health(ctx: RunContext, reward_key: str, mode: str) -> HealthReport:
    """The learning health of a stored run (`ctx`: a `RunContext`), from its finished datasets.

    Args:
        reward_key (`str`), mode (`str`): the annotations to count zero-std groups in (the run's
            own: what its updates trained on).
    """
    from tpgrpo.pipeline.catalog import manifest_or_none
    from tpgrpo.schemas.updates import BY_STEP
    from tpgrpo.storage import read_table

    layout, opts = ctx.layout, ctx.storage_options
    iterations, legacy = [], []
    for i in layout.list_iterations():
        updates = annotations = None
        up = manifest_or_none(layout.updates(i), opts)
        if up is not None:
            updates = read_table(layout.updates(i), "updates", storage_options=opts)
            if updates.num_rows and all(updates.column(c).null_count == updates.num_rows for c in BY_STEP):
                legacy.append(i)
        ann_uri = layout.annotations(i, reward_key, mode)
        if manifest_or_none(ann_uri, opts) is not None:
            annotations = read_table(
                ann_uri,
                "annotations",
                columns=["trajectory_id", "group_id", "step", "step_reward"],
                storage_options=opts,
            )
        if updates is not None or annotations is not None:
            iterations.append(iteration_health(updates, annotations, i))
    notes = []
    if legacy:
        notes.append(
            f"iterations {_span(legacy)}: updates written before per-step diagnostics (schema v1); "
            "their gradient shares are unknown"
        )
    return HealthReport(layout.run_id, iterations, health_warnings(iterations), notes)


def _steps(values: Sequence[float] | None, spec: str) -> str:
    return " ".join(format(v, spec) for v in values) if values is not None else "-"


def format_health(report: HealthReport, title: str) -> str:
    """The per-iteration table (top step share, zero-std groups, shares by step) and the warnings."""
    lines = [
        title,
        f"{'iter':>4}  {'opt':>3}  {'zero-std':>8}  {'top step':>8}  share of squared gradient by step j",
    ]
    for it in report.iterations:
        share = it.grad_share_by_step
        top = f"{int(np.argmax(share))}: {max(share):.2f}" if share else "-"
        zero = f"{it.zero_std_groups:.2f}" if it.zero_std_groups is not None else "-"
        lines.append(
            f"{it.iteration:>4}  {it.optimizer_steps:>3}  {zero:>8}  {top:>8}  {_steps(share, '.2f')}"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
