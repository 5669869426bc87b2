"""One stored trajectory, audited: boundary rewards, increments, turning points, step rewards, advantages.

Everything comes from the stored `rollouts`, `rewards/<key>`, `annotations/<key>/<mode>` and
`branches` datasets of one iteration; nothing is recomputed, so what is shown is what the update
trained on. Which of the window's steps the update trained (all of them, or the seeded random subset
of `update.timestep_fraction`) is derived from the run's config, as the update derives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from tpgrpo.algorithm import num_trained_steps, trained_step_mask
from tpgrpo.errors import DataError, UserError
from tpgrpo.schemas.images import decode_png
from tpgrpo.storage import read_manifest, read_table

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

ROLLOUT_COLUMNS = [
    "trajectory_id",
    "prompt",
    "prompt_id",
    "group_id",
    "batch",
    "seed",
    "window_start",
    "window_size",
]


@dataclass(frozen=True)
class TrajectoryAudit:
    """One trajectory's stored rewards and annotation (index `j`: boundaries `0 … W`, steps `0 … W−1`)."""

    run_id: str
    iteration: int
    trajectory_id: int
    reward_key: str
    mode: str
    prompt: str
    prompt_id: str
    group_id: int
    batch: int
    seed: int
    window_start: int
    window_size: int
    rho: list[float]  # [W+1] ρ_j
    strict: list[bool | None]  # [W+1]
    increment: list[float]  # [W] d_j
    aggregated: list[float]  # [W] r_agg_j
    turning_point: list[bool]  # [W]
    kept: list[bool]  # [W]
    step_reward: list[float]  # [W]
    advantage: list[float]  # [W]
    trained: list[list[int]] = field(default_factory=list)  # [epochs] the steps j trained in each epoch
    trained_note: str = ""  # how `trained` was derived, and whether the update read this annotation

    @property
    def trend(self) -> float:
        """Δ = ρ_W − ρ_0."""
        return self.rho[-1] - self.rho[0]


def load_trajectory(
    ctx: RunContext, iteration: int, trajectory_id: int, reward_key: str, mode: str
) -> TrajectoryAudit:
    """Read one trajectory of a stored iteration (`ctx`: a `RunContext`).

    Raises:
        `UserError`: no such trajectory in the iteration (names the valid range).
        `DataError`: a dataset is unfinished, or its rows for the trajectory are incomplete.
    """
    layout, opts = ctx.layout, ctx.storage_options
    flt = pc.field("trajectory_id") == trajectory_id
    meta = read_table(
        layout.rollouts(iteration), "rollouts", columns=ROLLOUT_COLUMNS, filter=flt, storage_options=opts
    )
    if meta.num_rows == 0:
        ids = read_table(
            layout.rollouts(iteration), "rollouts", columns=["trajectory_id"], storage_options=opts
        )
        tids = sorted(ids.column("trajectory_id").to_pylist())
        span = f"{tids[0]} … {tids[-1]}" if tids else "none"
        raise UserError(
            f"trajectory {trajectory_id} is not in iteration {iteration} of run {layout.run_id!r} "
            f"(trajectory ids there: {span}); pass --traj with one of them"
        )
    row = {c: meta.column(c)[0].as_py() for c in ROLLOUT_COLUMNS}
    w = int(row["window_size"])
    rewards = read_table(
        layout.rewards(iteration, reward_key),
        "rewards",
        columns=["boundary", "score", "strict"],
        filter=flt,
        storage_options=opts,
    ).sort_by("boundary")
    bounds = rewards.column("boundary").to_pylist()
    final_only = bounds == [w] and not ctx.cfg.branch.completions  # only the final image was scored
    if bounds != list(range(w + 1)) and not final_only:
        raise DataError(
            f"rewards/{reward_key} of iteration {iteration} hold boundaries "
            f"{rewards.column('boundary').to_pylist()} for trajectory {trajectory_id}, expected 0 … {w}; "
            "rerun the score stage with --force"
        )
    ann = read_table(
        layout.annotations(iteration, reward_key, mode), "annotations", filter=flt, storage_options=opts
    ).sort_by("step")
    if ann.column("step").to_pylist() != list(range(w)):
        raise DataError(
            f"annotations/{reward_key}/{mode} of iteration {iteration} hold steps "
            f"{ann.column('step').to_pylist()} for trajectory {trajectory_id}, expected 0 … {w - 1}; "
            "rerun tpgrpo annotate with --force"
        )
    col = {name: ann.column(name).to_pylist() for name in ann.column_names}
    trained, note = _trained_steps(ctx, iteration, trajectory_id, w, col["advantage"], reward_key, mode)
    return TrajectoryAudit(
        run_id=layout.run_id,
        iteration=iteration,
        trajectory_id=trajectory_id,
        reward_key=reward_key,
        mode=mode,
        prompt=row["prompt"],
        prompt_id=row["prompt_id"],
        group_id=int(row["group_id"]),
        batch=int(row["batch"]),
        seed=int(row["seed"]),
        window_start=int(row["window_start"]),
        window_size=w,
        rho=[math.nan] * w * final_only + [float(v) for v in rewards.column("score").to_pylist()],
        strict=[None] * w * final_only + rewards.column("strict").to_pylist(),
        increment=col["increment"],
        aggregated=col["aggregated"],
        turning_point=col["turning_point"],
        kept=col["kept"],
        step_reward=col["step_reward"],
        advantage=col["advantage"],
        trained=trained,
        trained_note=note,
    )


def _trained_steps(
    ctx: Any, iteration: int, trajectory_id: int, w: int, advantage: list[float], key: str, mode: str
) -> tuple[list[list[int]], str]:
    """The steps `j` the update trains of this trajectory in each epoch, and a note saying how that
    is known: the seeded subsets of `update.timestep_fraction` (`tpgrpo.algorithm.subsets`), none when
    `advantage.skip_zero` skips the trajectory, and whether the iteration's update read this
    annotation (the `updates` manifest records the hash of the annotation it read)."""
    u = ctx.cfg.update
    fraction, epochs = u.timestep_fraction, u.epochs
    try:
        k = num_trained_steps(w, fraction)
    except ValueError as err:
        return [], f"none: {err}"
    if ctx.cfg.advantage.skip_zero and all(a == 0 for a in advantage):
        trained: list[list[int]] = [[] for _ in range(epochs)]
        note = "none: its advantages are all 0 (advantage.skip_zero leaves it out)"
    else:
        trained = [
            [
                int(j)
                for j in trained_step_mask(
                    ctx.cfg.seed, iteration, e, np.array([trajectory_id]), w, fraction
                )[0].nonzero()[0]
            ]
            for e in range(epochs)
        ]
        if k == w:
            note = f"all {w} (update.timestep_fraction 1)"
        else:
            note = (
                f"update.timestep_fraction {fraction:g}: {k} of {w} per epoch, a subset seeded by run seed, "
                "iteration, epoch and trajectory"
            )
    try:
        read = read_manifest(ctx.layout.updates(iteration), ctx.storage_options).inputs.get("annotations")
    except DataError:
        return trained, f"{note}; iteration {iteration} has no finished update yet"
    own = read_manifest(ctx.layout.annotations(iteration, key, mode), ctx.storage_options).hash
    if read != own:
        return trained, f"{note}; the update of iteration {iteration} trained on another annotation"
    return trained, note


def _num(value: float | None, width: int = 10) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.4f}"


def format_trajectory(a: TrajectoryAudit) -> str:
    """The audit as plain aligned text: a header and one row per boundary / trained step `j`."""
    w0 = a.window_start
    lines = [
        f"run {a.run_id}  iteration {a.iteration}  trajectory {a.trajectory_id}",
        f"prompt {a.prompt_id}: {a.prompt!r}",
        f"group {a.group_id}  batch {a.batch}  seed {a.seed}  window [{w0}, {w0 + a.window_size})",
        f"reward {a.reward_key}  mode {a.mode}  trend Δ = rho_W - rho_0 = "
        + (f"{a.trend:+.4f}" if not math.isnan(a.trend) else "- (only the final image was scored)"),
        "",
        f"{'j':>3}{'grid':>6}{'rho_j':>10}{'d_j':>10}{'r_agg_j':>10}{'tp':>5}{'kept':>6}"
        f"{'step_reward':>13}{'advantage':>11}",
    ]
    for j in range(a.window_size + 1):
        if j < a.window_size:
            lines.append(
                f"{j:>3}{w0 + j:>6}{_num(a.rho[j])}{_num(a.increment[j])}{_num(a.aggregated[j])}"
                f"{'yes' if a.turning_point[j] else '-':>5}{'yes' if a.kept[j] else '-':>6}"
                f"{_num(a.step_reward[j], 13)}{_num(a.advantage[j], 11)}"
            )
        else:
            lines.append(f"{j:>3}{w0 + j:>6}{_num(a.rho[j])}{'(final image)':>23}")
    tps = [j for j in range(a.window_size) if a.turning_point[j]]
    kept = [j for j in range(a.window_size) if a.kept[j]]
    lines.append("")
    lines.append(f"turning points: detected at steps {tps or 'none'}, kept at {kept or 'none'}")
    if a.trained and any(a.trained) and any(len(t) < a.window_size for t in a.trained):
        epochs = "; ".join(f"epoch {e} {steps}" for e, steps in enumerate(a.trained))
        lines.append(f"trained steps: {epochs} ({a.trained_note})")
    else:
        lines.append(f"trained steps: {a.trained_note}")
    return "\n".join(lines)


def trajectory_strip(ctx: RunContext, a: TrajectoryAudit, *, scale: int = 3) -> Any:
    """A PIL image: the branch images `C(s_{w0+j})`, `j = 0 … W`, captioned with `ρ_j`, `d_j`, flags."""
    from tpgrpo.report.images import annotated_strip

    table = read_table(
        ctx.layout.branches(a.iteration),
        "branches",
        columns=["boundary", "image"],
        filter=pc.field("trajectory_id") == a.trajectory_id,
        storage_options=ctx.storage_options,
    ).sort_by("boundary")
    if table.column("boundary").to_pylist() != list(range(a.window_size + 1)):
        if math.isnan(a.rho[0]):
            raise UserError(
                f"run {a.run_id} was trained without completions (branch.completions=false): iteration "
                f"{a.iteration} holds the final image of trajectory {a.trajectory_id} alone, no strip to draw"
            )
        raise DataError(
            f"branches of iteration {a.iteration} lack images of trajectory {a.trajectory_id}; "
            "rerun the branch stage with --force"
        )
    images = [decode_png(b) for b in table.column("image").to_pylist()]
    captions: list[list[str]] = []
    for j in range(a.window_size + 1):
        lines = [f"j={j}  k={a.window_start + j}", f"R={a.rho[j]:+.4f}"]
        if j < a.window_size:
            flag = "TP kept" if a.kept[j] else ("TP (dropped)" if a.turning_point[j] else "")
            lines += [f"d={a.increment[j]:+.4f}", f"adv={a.advantage[j]:+.3f}", flag]
        else:
            lines += ["final image"]
        captions.append(lines)
    title = (
        f"{a.run_id} it{a.iteration} traj {a.trajectory_id} | {a.reward_key}/{a.mode} | "
        f"trend {a.trend:+.4f}\n{a.prompt}"
    )
    highlight = [bool(a.kept[j]) if j < a.window_size else False for j in range(a.window_size + 1)]
    return annotated_strip(images, captions, title, scale=scale, highlight=highlight)


def pick_examples(ctx: RunContext, iteration: int, reward_key: str, mode: str, count: int = 3) -> list[int]:
    """Trajectories worth showing: most kept turning points, then the best and worst final reward."""
    layout, opts = ctx.layout, ctx.storage_options
    ann = read_table(
        layout.annotations(iteration, reward_key, mode),
        "annotations",
        columns=["trajectory_id", "kept"],
        storage_options=opts,
    )
    tids = np.asarray(ann.column("trajectory_id").to_numpy())
    kept = np.asarray(ann.column("kept").to_numpy(zero_copy_only=False), dtype=bool)
    unique = sorted(set(tids.tolist()))
    rewards = read_table(
        layout.rewards(iteration, reward_key),
        "rewards",
        columns=["trajectory_id", "boundary", "score"],
        storage_options=opts,
    )
    final: dict[int, float] = {}
    last_boundary: dict[int, int] = {}
    for t, j, s in zip(
        rewards.column("trajectory_id").to_pylist(),
        rewards.column("boundary").to_pylist(),
        rewards.column("score").to_pylist(),
        strict=True,
    ):
        if j >= last_boundary.get(t, -1):
            last_boundary[t], final[t] = j, s
    by_tp = sorted(unique, key=lambda t: (-int(kept[tids == t].sum()), t))
    by_reward = sorted(unique, key=lambda t: (final.get(t, 0.0), t))
    chosen: list[int] = []
    for t in (by_tp[0], by_reward[-1], by_reward[0], *by_tp[1:]):
        if t not in chosen:
            chosen.append(t)
        if len(chosen) >= count:
            break
    return chosen
