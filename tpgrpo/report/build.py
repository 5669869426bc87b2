"""`tpgrpo report`: PNG plots and one self-contained HTML page of a stored run.

Written to `out/`: `rewards.png` (train and eval reward against iteration, model evaluations and
wall-clock), `turning_points.png`, `learning.png` (per trained step: gradient share and norm, clip
fraction, non-zero advantages, and groups without reward spread; `report.health`),
`strips_iter=NNNN.png` (example trajectories' branch images with their rewards), for a Flow-GRPO
run's audited iterations `turning_points_<mode>.png` and `strips_iter=NNNN_<mode>.png`
(`audit_sections`), `eval_samples.png` (the latest evaluation per task) and `index.html`, which
embeds all of them as data URIs so it can be mailed or archived as one file. Only stored data is
read: model evaluations, timings and `created` stamps come from the manifests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpgrpo.pipeline.catalog import (
    RunInfo,
    checkpoint_or_none,
    format_windows,
    manifest_or_none,
    parse_time,
    run_info,
    run_windows,
    stage_reached,
)
from tpgrpo.pipeline.summary import config_summary
from tpgrpo.report import html
from tpgrpo.report.health import format_health, read_health
from tpgrpo.report.plots import Series, learning_plots, reward_curves, turning_point_plots
from tpgrpo.report.stats import TurningPointStats, format_turning_points, read_turning_point_stats

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

Log = Callable[[str], None]


@dataclass
class ReportFiles:
    """What `build_report` wrote."""

    html: Path
    images: list[Path] = field(default_factory=list)
    learned: list[str] = field(default_factory=list)  # paired gains of the last evaluation over the first


def minutes_since(when: datetime | None, start: datetime | None) -> float | None:
    if when is None or start is None:
        return None
    return (when - start).total_seconds() / 60.0


def _num(value: Any, spec: str = "+.4f") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def reward_series(ctx: RunContext, info: RunInfo, key: str, mode: str) -> dict[str, list[Series]]:
    """Curves by reward key: train (ρ_W and ρ_0 of `key`/`mode`) and evals, with their x axes."""
    layout, opts = ctx.layout, ctx.storage_options
    start = info.created
    final = Series(f"train: mean final reward rho_W ({key})", style="o-")
    initial = Series(f"train: mean rho_0, ODE from s_0 ({key})", style="^:")
    spent_before: dict[int, int] = {}  # iteration -> model evaluations of all earlier iterations
    total = 0
    for rec in info.iterations:
        spent_before[rec.iteration] = total
        total += rec.model_evals
        ann = manifest_or_none(layout.annotations(rec.iteration, key, mode), opts)
        if ann is None:
            continue
        x_evals = spent_before[rec.iteration] + rec.sampling_evals
        x_min = minutes_since(rec.rewards_created, start)
        for s, metric in ((final, "reward_final_mean"), (initial, "reward_initial_mean")):
            if isinstance(ann.metrics.get(metric), int | float):
                s.iteration.append(rec.iteration)
                s.model_evals.append(x_evals)
                s.minutes.append(x_min)
                s.value.append(float(ann.metrics[metric]))
    base = checkpoint_or_none(layout.checkpoint(0), opts)
    ckpt_time = {0: parse_time(base.created) if base is not None else start}
    for rec in info.iterations:
        ckpt_time[rec.iteration + 1] = rec.finished
    groups: dict[tuple[str, int | None], Series] = {}
    for e in info.evals:
        if e.checkpoint is None or not isinstance(e.metrics.get("score"), int | float):
            continue
        s = groups.setdefault(
            (e.reward_key, e.steps),
            Series(f"eval: mean score ({e.reward_key}, {e.steps} ODE steps)", style="s-"),
        )
        s.iteration.append(e.checkpoint)
        s.model_evals.append(spent_before.get(e.checkpoint, total if e.checkpoint > 0 else 0))
        s.minutes.append(minutes_since(ckpt_time.get(e.checkpoint), start))
        s.value.append(float(e.metrics["score"]))
    rows: dict[str, list[Series]] = {key: [s for s in (final, initial) if s.value]}
    for (eval_key, _), s in groups.items():
        rows.setdefault(eval_key, []).append(s)
    return rows


def eval_grid(ctx: RunContext, uri: str, per_task: int = 6) -> Any:
    """A PIL grid of an eval dataset: one row per task, its first samples captioned with scores."""
    from tpgrpo.report.images import labelled_grid
    from tpgrpo.schemas.images import decode_png
    from tpgrpo.storage import read_table

    table = read_table(
        uri, "eval", columns=["task", "image", "score", "strict"], storage_options=ctx.storage_options
    )
    by_task: dict[str, list[tuple[Any, str]]] = {}
    for task, img, score, strict in zip(
        table.column("task").to_pylist(),
        table.column("image").to_pylist(),
        table.column("score").to_pylist(),
        table.column("strict").to_pylist(),
        strict=True,
    ):
        cell = by_task.setdefault(task, [])
        if len(cell) < per_task:
            mark = "" if strict is None else ("ok " if strict else "x ")
            cell.append((decode_png(img), f"{mark}{score:.3f}"))
    tasks = sorted(by_task)
    return labelled_grid(
        [[im for im, _ in by_task[t]] for t in tasks],
        tasks,
        [[c for _, c in by_task[t]] for t in tasks],
        scale=2,
    )


def eval_tables(ctx: RunContext, info: RunInfo) -> tuple[list[str], list[str]]:
    """An overview of every evaluation, and a per-task table of base vs latest checkpoint per reward;
    and the paired-gain sentences (what the model learned), one per reward and step count."""
    from tpgrpo.stages.evaluate import summarize
    from tpgrpo.storage import read_table

    if not info.evals:
        hint = f"No evaluations yet: tpgrpo evaluate --run {info.run_id} --checkpoint all"
        return [html.paragraph(hint, True)], []
    rows = [
        [
            e.name,
            e.reward_key,
            e.steps if e.steps is not None else "-",
            e.rows,
            _num(e.metrics.get("score")),
            _num(e.metrics.get("strict"), ".3f"),
            _num(e.metrics.get("task_mean_strict"), ".3f"),
        ]
        for e in info.evals
    ]
    parts = [
        html.table(["eval", "reward", "steps", "images", "score", "strict", "task-mean strict"], rows, left=2)
    ]
    learned: list[str] = []
    by_group: dict[tuple[str, int | None], list[Any]] = {}
    for e in info.evals:
        if e.checkpoint is not None:
            by_group.setdefault((e.reward_key, e.steps), []).append(e)
    for (key, steps), evals in sorted(by_group.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        chosen = sorted(
            {evals[0].checkpoint: evals[0], evals[-1].checkpoint: evals[-1]}.values(),
            key=lambda e: e.checkpoint,
        )
        summaries = []
        for e in chosen:
            t = read_table(
                ctx.layout.eval(e.name, key),
                "eval",
                columns=["task", "score", "strict"],
                storage_options=ctx.storage_options,
            )
            summaries.append(summarize({c: t.column(c).to_pylist() for c in ("task", "score", "strict")}))
        tasks = sorted({t for s in summaries for t in s["tasks"]})
        headers = ["task"] + [
            h
            for e in chosen
            for h in (f"n @{e.checkpoint}", f"score @{e.checkpoint}", f"strict @{e.checkpoint}")
        ]
        body = []
        for t in [*tasks, "overall"]:
            row: list[Any] = [t]
            for s in summaries:
                v = s if t == "overall" else s["tasks"].get(t, {})
                row += [v.get("n", "-"), _num(v.get("score"), ".3f"), _num(v.get("strict"), ".3f")]
            body.append(row)
        parts.append(
            html.paragraph(f"Per task, reward {key}, {steps} ODE steps (checkpoint K = after K updates):")
        )
        parts.append(html.table(headers, body))
        if len(chosen) == 2:
            learned.append(gain_text(ctx, key, chosen[0], chosen[1]))
            parts.append(html.paragraph(learned[-1]))
    return parts, learned


def gain_text(ctx: RunContext, key: str, base: Any, last: Any) -> str:
    """What the model learned: the paired gain of the last evaluated checkpoint over the first."""
    from tpgrpo.errors import DataError
    from tpgrpo.report.paired import gains, read_eval

    try:
        found = gains(
            read_eval(ctx.layout.eval(base.name, key), ctx.storage_options),
            read_eval(ctx.layout.eval(last.name, key), ctx.storage_options),
        )
    except DataError as err:
        return f"No paired gain of checkpoint {last.checkpoint} over {base.checkpoint}: {err}"
    head = (
        f"Paired gain of checkpoint {last.checkpoint} over checkpoint {base.checkpoint} (same images, same "
        f"noise; {found[0].images} images, {found[0].prompts} prompts, 95 % CI over prompts): "
    )
    return head + "; ".join(g.describe() for g in found) + "."


def example_strips(
    ctx: RunContext, iteration: int, key: str, mode: str, png: Path, files: ReportFiles
) -> Path:
    """Draw the example trajectories of one annotated iteration (`pick_examples`: most kept turning
    points, best and worst final reward), one branch strip each, stacked into `png`; list it in
    `files`. Returns `png`."""
    from tpgrpo.report.images import stack_vertically
    from tpgrpo.report.trajectory import load_trajectory, pick_examples, trajectory_strip

    strips = [
        trajectory_strip(ctx, load_trajectory(ctx, iteration, t, key, mode), scale=2)
        for t in pick_examples(ctx, iteration, key, mode)
    ]
    stack_vertically(strips).save(png)
    files.images.append(png)
    return png


def build_report(
    ctx: RunContext,
    out_dir: str | Path,
    *,
    reward_key: str | None = None,
    mode: str | None = None,
    log: Log | None = None,
) -> ReportFiles:
    """Write the plots and `index.html` of a run into `out_dir` (created if needed)."""

    say = log or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = run_info(ctx)
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    key = reward_key or info.reward_key
    m = mode or cfg.reward.mode
    files = ReportFiles(out / "index.html")
    sections: list[str] = []

    # --- summary
    window = format_windows(run_windows(ctx), cfg)
    summary_rows = [
        ["status", f"{info.status}, {info.iterations_done}/{cfg.iterations} iterations done"],
        ["created", info.created.isoformat() if info.created else "-"],
        *([name, text] for name, text in config_summary(cfg, window, info.reward_key).items()),
        ["shown", f"{key}/{m}"],
        ["location", layout.run_dir],
    ]
    sections.append(html.section("Run", html.table(None, summary_rows, left=2)))

    # --- reward curves
    say("plotting reward curves")
    series = reward_series(ctx, info, key, m)
    rewards_png = out / "rewards.png"
    reward_curves(series, str(rewards_png), f"{layout.run_id}: reward")
    files.images.append(rewards_png)
    total = 0
    it_rows = []
    for rec in info.iterations:
        total += rec.model_evals
        it_rows.append(
            [
                rec.iteration,
                stage_reached(rec),
                _num(rec.reward_initial),
                _num(rec.reward_final),
                rec.turning_points if rec.turning_points is not None else "-",
                rec.kept if rec.kept is not None else "-",
                _num(rec.loss, "+.3e"),
                rec.model_evals,
                total,
                f"{rec.compute_s:.1f}",
                rec.finished.isoformat() if rec.finished else "-",
            ]
        )
    sections.append(
        html.section(
            "Reward",
            html.image(rewards_png, "reward against iteration, model evaluations and wall-clock"),
            html.paragraph(
                "Train: means over each iteration's trajectories of the run's reward (rho_W: final images; "
                "rho_0: ODE completion of the initial noise). Eval: pure-ODE samples of held-out prompts "
                "with the EMA weights of checkpoint K. Model evaluations and times come from the datasets' "
                "manifests.",
                True,
            ),
            html.table(
                [
                    "iter",
                    "reached",
                    "rho_0",
                    "rho_W",
                    "TPs",
                    "kept",
                    "loss",
                    "evals",
                    "cum. evals",
                    "compute s",
                    "finished",
                ],
                it_rows,
                left=2,
            ),
        )
    )

    # --- evaluations
    eval_parts, files.learned = eval_tables(ctx, info)
    latest = info.last_eval()
    if latest is not None:
        grid_png = out / "eval_samples.png"
        eval_grid(ctx, layout.eval(latest.name, latest.reward_key)).save(grid_png)
        files.images.append(grid_png)
        eval_parts += [
            html.paragraph(f"Samples of {latest.name}, reward {latest.reward_key} (score under each image):"),
            html.image(grid_png, f"evaluation samples of {latest.name}"),
        ]
    sections.append(html.section("Evaluation", *eval_parts))

    # --- turning points
    iterations = [
        r.iteration
        for r in info.iterations
        if manifest_or_none(layout.annotations(r.iteration, key, m), opts) is not None
    ]
    stats: list[TurningPointStats] = [
        read_turning_point_stats(layout.annotations(i, key, m), i, opts) for i in iterations
    ]
    if stats:
        say("plotting turning-point statistics")
        tp_png = out / "turning_points.png"
        turning_point_plots(stats, str(tp_png), f"{layout.run_id}: turning points ({key}, {m})")
        files.images.append(tp_png)
        sections.append(
            html.section(
                "Turning points",
                html.image(tp_png, "turning-point statistics"),
                html.preformatted(format_turning_points(stats, f"reward {key}, mode {m}")),
            )
        )
    else:
        sections.append(
            html.section("Turning points", html.paragraph(f"No {key}/{m} annotations yet.", True))
        )

    if m == "flow_grpo":
        sections += audit_sections(ctx, info, key, out, files, say)

    # --- learning health
    say("plotting learning health")
    health = read_health(ctx, key, m)
    health_parts = [
        html.paragraph(
            "Per trained step j: its share of the squared gradient (g_j² / Σ g², from the gradient norm of "
            "each step's part of the loss, before clipping), the norms, the clip fraction and the share of "
            "non-zero advantages, averaged over each iteration's optimizer steps; the dashed line is the "
            "share of prompt groups whose rewards were all equal (no signal). tpgrpo audit health prints "
            "the same.",
            True,
        )
    ]
    if health.iterations:
        health_png = out / "learning.png"
        learning_plots(health.iterations, str(health_png), f"{layout.run_id}: learning health ({key}, {m})")
        files.images.append(health_png)
        health_parts.append(html.image(health_png, "learning health by trained step"))
        health_parts.append(html.preformatted(format_health(health, f"reward {key}, mode {m}")))
    health_parts += [html.paragraph(f"Warning: {w}") for w in health.warnings]
    health_parts += [html.paragraph(n, True) for n in health.notes]
    if not health.warnings and health.iterations:
        health_parts.append(html.paragraph("No warnings.", True))
    sections.append(html.section("Learning health", *health_parts))

    # --- example strips (branch images: none without completions)
    strip_parts = []
    if not cfg.branch.completions:
        note = (
            "Trained without completions (branch.completions: false): a trajectory stores its final "
            "image only, so there are no branch strips to draw"
            + (" (the audited iterations' are above)." if cfg.branch.audit_every is not None else ".")
        )
        sections.append(html.section("Example trajectories", html.paragraph(note, True)))
    for i in sorted({iterations[0], iterations[-1]}) if iterations and cfg.branch.completions else []:
        say(f"drawing example trajectories of iteration {i}")
        png = example_strips(ctx, i, key, m, out / f"strips_iter={i:04d}.png", files)
        strip_parts += [
            html.paragraph(f"Iteration {i}:"),
            html.image(png, f"example trajectories of iteration {i}"),
        ]
    if strip_parts:
        strip_parts.insert(
            0,
            html.paragraph(
                "Branch images C(s_{w0+j}) of example trajectories (most kept turning points, best and "
                "worst final reward), each captioned with its reward R, increment d and advantage; red "
                "frames mark kept turning points.",
                True,
            ),
        )
        sections.append(html.section("Example trajectories", *strip_parts))

    files.html.write_text(html.page(f"tpgrpo run {layout.run_id}", sections), encoding="utf-8")
    return files


AUDIT_MODES = ("tp_constrained", "tp", "incremental")
"""The step-level modes a Flow-GRPO run's audited iterations may be re-annotated with, in the order
the report shows them (the first one found also gets a plot and example strips)."""


def audit_sections(
    ctx: RunContext, info: RunInfo, key: str, out: Path, files: ReportFiles, say: Log
) -> list[str]:
    """TP-GRPO's view of a Flow-GRPO run: the step-level annotations of its audited iterations
    (`branch.audit_every`, then `tpgrpo annotate --mode tp_constrained`), which the training did not
    use. No section when there are none."""
    layout, opts = ctx.layout, ctx.storage_options
    found = {
        mode: [
            r.iteration
            for r in info.iterations
            if manifest_or_none(layout.annotations(r.iteration, key, mode), opts) is not None
        ]
        for mode in AUDIT_MODES
    }
    found = {mode: its for mode, its in found.items() if its}
    if not found:
        return []
    first, iterations = next(iter(found.items()))
    parts = [
        html.paragraph(
            f"This run trains Flow-GRPO advantages without completions; iteration(s) "
            f"{', '.join(map(str, iterations))} were completed anyway (branch.audit_every) and "
            f"re-annotated with TP-GRPO's step-level mode(s) {', '.join(found)} (tpgrpo annotate): what "
            "TP-GRPO would have made of the same trajectories. The training did not use these annotations.",
            True,
        )
    ]
    say(f"plotting the audited iterations' turning points ({first})")
    png = out / f"turning_points_{first}.png"
    stats = {
        mode: [read_turning_point_stats(layout.annotations(i, key, mode), i, opts) for i in its]
        for mode, its in found.items()
    }
    turning_point_plots(stats[first], str(png), f"{layout.run_id}: turning points ({key}, {first}, audited)")
    files.images.append(png)
    parts.append(html.image(png, f"turning points of the audited iterations ({first})"))
    parts += [
        html.preformatted(format_turning_points(st, f"reward {key}, mode {mode}"))
        for mode, st in stats.items()
    ]
    last = iterations[-1]
    say(f"drawing example trajectories of audited iteration {last}")
    strip_png = example_strips(ctx, last, key, first, out / f"strips_iter={last:04d}_{first}.png", files)
    parts += [
        html.paragraph(
            f"Iteration {last}, annotated {first}: branch images C(s_{{w0+j}}) of example "
            "trajectories, each captioned with R, d and the advantage; red frames mark kept turning points.",
            True,
        ),
        html.image(strip_png, f"example trajectories of audited iteration {last}"),
    ]
    return [html.section("TP-GRPO on the audited iterations", *parts)]
