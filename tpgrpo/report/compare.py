"""`tpgrpo runs compare`: several runs on one page: overlaid curves and a table of final figures.

Written to `out/`: `compare_rewards.png` (each run's train reward ρ_W and its evaluations against
iteration, model evaluations and wall-clock; runs with the same reward share a row, since rewards
of different models do not share a scale), `compare_turning_points.png` (kept turning points per
iteration, against the same three axes) and `index.html` embedding both with the table. Only
stored data is read, as for `tpgrpo report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpgrpo.report import html
from tpgrpo.report.build import ReportFiles, minutes_since, reward_series
from tpgrpo.report.plots import Series, reward_curves
from tpgrpo.report.runs import RunInfo, run_info

COLUMNS = (
    "run",
    "status",
    "mode",
    "reward",
    "iterations",
    "train reward",
    "eval",
    "eval score",
    "eval strict",
    "model evals",
    "compute s",
    "wall-clock min",
    "kept turning points",
)


@dataclass(frozen=True)
class FinalFigures:
    """One run's row of the comparison table (None where the run has no such figure yet)."""

    run: str
    status: str
    mode: str
    reward: str
    iterations: int
    train_reward: float | None
    eval_name: str | None
    eval_score: float | None
    eval_strict: float | None
    model_evals: int
    compute_s: float
    wall_clock_min: float | None
    kept_turning_points: int | None

    def cells(self) -> list[str]:
        def num(value: float | int | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        return [
            self.run,
            self.status,
            self.mode,
            self.reward,
            str(self.iterations),
            num(self.train_reward, ".4f"),
            self.eval_name or "-",
            num(self.eval_score, ".4f"),
            num(self.eval_strict, ".3f"),
            str(self.model_evals),
            f"{self.compute_s:.0f}",
            num(self.wall_clock_min, ".1f"),
            num(self.kept_turning_points, "d"),
        ]


def final_figures(info: RunInfo) -> FinalFigures:
    """The figures of a run at its latest iteration and latest evaluation."""
    last, ev = info.last, info.last_eval()
    finished = [r.finished for r in info.iterations if r.finished is not None]
    kept = [r.kept for r in info.iterations if r.kept is not None]
    strict = ev.metrics.get("strict") if ev else None
    return FinalFigures(
        run=info.run_id,
        status=info.status,
        mode=info.config.reward.mode,
        reward=info.reward_key,
        iterations=info.iterations_done,
        train_reward=last.reward_final if last else None,
        eval_name=ev.name if ev else None,
        eval_score=ev.metrics.get("score") if ev else None,
        eval_strict=strict if isinstance(strict, int | float) else None,
        model_evals=sum(r.model_evals for r in info.iterations),
        compute_s=sum(r.compute_s for r in info.iterations),
        wall_clock_min=minutes_since(max(finished), info.created) if finished else None,
        kept_turning_points=sum(kept) if kept else None,
    )


def turning_point_series(info: RunInfo) -> Series:
    """Kept turning points per iteration against iteration, model evaluations and minutes."""
    s = Series(f"{info.run_id}: kept turning points", style="o-")
    spent = 0
    for rec in info.iterations:
        if rec.kept is not None:
            s.iteration.append(rec.iteration)
            s.model_evals.append(spent + rec.sampling_evals)
            s.minutes.append(minutes_since(rec.rewards_created, info.created))
            s.value.append(float(rec.kept))
        spent += rec.model_evals
    return s


def compare_runs(contexts: list[Any], out_dir: str | Path) -> tuple[ReportFiles, list[FinalFigures]]:
    """Write the comparison of the runs `contexts` (loaded runs) into `out_dir` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "index.html")
    infos = [run_info(ctx) for ctx in contexts]
    rows: dict[str, list[Series]] = {}
    tps: list[Series] = []
    for ctx, info in zip(contexts, infos, strict=True):
        own = reward_series(ctx, info, info.reward_key, info.config.reward.mode)
        for key, curves in own.items():
            for s in curves:
                if s.label.startswith("train: mean rho_0"):
                    continue  # ρ_0 per run would double the lines; the run's own report has it
                s.label = f"{info.run_id}: {s.label}"
                rows.setdefault(key, []).append(s)
        tps.append(turning_point_series(info))
    names = ", ".join(info.run_id for info in infos)
    rewards_png = out / "compare_rewards.png"
    reward_curves(rows, str(rewards_png), f"runs {names}: reward")
    files.images.append(rewards_png)
    sections = [html.section("Reward and evaluations", html.image(rewards_png, "reward curves"))]
    if any(s.value for s in tps):
        tp_png = out / "compare_turning_points.png"
        reward_curves(
            {"kept turning points": [s for s in tps if s.value]},
            str(tp_png),
            f"runs {names}: turning points",
            ylabel="kept turning points per iteration",
        )
        files.images.append(tp_png)
        sections.append(html.section("Turning points", html.image(tp_png, "turning points")))
    else:
        sections.append(
            html.section(
                "Turning points", html.paragraph("No run has annotations with turning points.", note=True)
            )
        )
    figures = [final_figures(info) for info in infos]
    table = html.table(list(COLUMNS), [f.cells() for f in figures])
    sections.insert(0, html.section("Final figures", table))
    files.html.write_text(html.page(f"tpgrpo: runs {names}", sections))
    return files, figures


def format_figures(figures: list[FinalFigures]) -> str:
    """The table of final figures as text."""
    cells = [list(COLUMNS), *(f.cells() for f in figures)]
    widths = [max(len(row[c]) for row in cells) for c in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
