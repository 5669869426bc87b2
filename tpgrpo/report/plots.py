"""Report plots (matplotlib, Agg backend): reward curves, turning-point statistics, learning health.

Each function takes plain series (no storage access) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpgrpo.report.health import IterationHealth
from tpgrpo.report.stats import TurningPointStats

DPI = 110


@dataclass
class Series:
    """One curve: y against iteration, cumulative model evaluations and elapsed minutes.

    Args:
        label (`str`): legend label.
        iteration, model_evals, minutes, value (`list`): the points, same length; a point whose
            model_evals or minutes is unknown carries None there and is left out of that panel.
        style (`str`): matplotlib format, e.g. `"o-"`.
    """

    label: str
    iteration: list[float] = field(default_factory=list)
    model_evals: list[float | None] = field(default_factory=list)
    minutes: list[float | None] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    style: str = "o-"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def reward_curves(
    rows: Mapping[str, Sequence[Series]], path: str, title: str, ylabel: str = "reward ({key})"
) -> None:
    """Per reward key one row of three panels: reward against iteration, model evaluations, wall-clock.

    Args:
        rows (`Mapping[str, Sequence[Series]]`): reward key -> its curves (train and/or eval);
            each key gets its own y axis, since rewards of different models do not share a scale.
        path (`str`): the PNG to write.
        title (`str`): the figure title.
        ylabel (`str`): the y label, `{key}` replaced by the row's key.
    """
    plt = _pyplot()
    keys = list(rows) or ["reward"]
    fig, axes = plt.subplots(len(keys), 3, figsize=(14, 3.6 * len(keys)), dpi=DPI, squeeze=False)
    panels = (
        ("iteration (eval: checkpoint K = after K updates)", "iteration"),
        ("model evaluations spent (cumulative)", "model_evals"),
        ("wall-clock since run start [min]", "minutes"),
    )
    for r, key in enumerate(keys):
        for c, (xlabel, attr) in enumerate(panels):
            ax = axes[r][c]
            for s in rows.get(key, []):
                pts = [(x, y) for x, y in zip(getattr(s, attr), s.value, strict=True) if x is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], s.style, label=s.label, markersize=5)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel.format(key=key))
            ax.grid(alpha=0.3)
            if attr == "iteration":
                xs = [x for s in rows.get(key, []) for x in s.iteration]
                if xs:
                    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
                _integer_ticks(ax)
        if rows.get(key):
            axes[r][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def turning_point_plots(stats: Sequence[TurningPointStats], path: str, title: str) -> None:
    """Three panels: rate by step index, sign balance before/after balancing, replacement magnitude."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=DPI)
    cmap = plt.get_cmap("viridis")
    ax = axes[0]
    for n, s in enumerate(stats):
        color = cmap(n / max(1, len(stats) - 1))
        steps = list(range(s.steps))
        ax.plot(steps, s.rate_detected, "o-", color=color, label=f"it{s.iteration} detected")
        ax.plot(steps, s.rate_kept, "s--", color=color, label=f"it{s.iteration} kept", alpha=0.8)
    ax.set_xlabel("trained step j")
    _integer_ticks(ax)
    ax.set_ylabel("turning-point rate")
    ax.set_title("rate by step index")
    ax.grid(alpha=0.3)
    if stats:
        ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    x = np.arange(len(stats))
    width = 0.2
    bars = (
        ("detected +", [s.detected_pos for s in stats], "#2b8cbe", 0),
        ("detected −", [s.detected_neg for s in stats], "#e34a33", 1),
        ("kept +", [s.kept_pos for s in stats], "#a6bddb", 2),
        ("kept −", [s.kept_neg for s in stats], "#fdbb84", 3),
    )
    for label, values, color, k in bars:
        ax.bar(x + (k - 1.5) * width, values, width, label=label, color=color)
    ax.set_xticks(x, [f"it{s.iteration}" for s in stats])
    ax.set_ylabel("turning points")
    ax.set_title("sign of r_agg, before/after balancing")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    its = [s.iteration for s in stats]
    ax.plot(
        its,
        [s.replacement_abs if s.replacement_abs is not None else np.nan for s in stats],
        "o-",
        label="mean |r_agg| at kept TPs",
    )
    ax.plot(
        its,
        [s.increment_abs_at_tp if s.increment_abs_at_tp is not None else np.nan for s in stats],
        "s--",
        label="mean |d| at kept TPs",
    )
    ax.plot(its, [s.increment_abs for s in stats], "^:", label="mean |d| all steps")
    ax.set_xlabel("iteration")
    _integer_ticks(ax)
    ax.set_ylabel("magnitude")
    ax.set_title("replacement vs plain increment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def learning_plots(iterations: Sequence[IterationHealth], path: str, title: str) -> None:
    """Four panels against iteration, one line per trained step j: share of the squared gradient,
    gradient norm (log scale), clip fraction, and share of non-zero advantages beside the share of
    prompt groups with zero reward std (no signal)."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), dpi=DPI)
    width = max((len(it.grad_norm_by_step or it.adv_abs_by_step or []) for it in iterations), default=0)
    cmap = plt.get_cmap("viridis")
    its = [it.iteration for it in iterations]
    panels = (
        (axes[0][0], "grad_share_by_step", "share of squared gradient", "gradient share by step", False),
        (axes[0][1], "grad_norm_by_step", "gradient norm (before clipping)", "gradient norm by step", True),
        (axes[1][0], "clip_frac_by_step", "clip fraction", "ratio clipped, by step", False),
        (axes[1][1], "adv_nonzero_by_step", "share", "non-zero advantages by step", False),
    )
    for ax, attr, ylabel, name, log in panels:
        for j in range(width):
            ys = [
                v[j] if (v := getattr(it, attr)) is not None and j < len(v) else np.nan for it in iterations
            ]
            if log:
                ys = [y if y > 0 else np.nan for y in ys]
            if not all(np.isnan(ys)):
                ax.plot(its, ys, "o-", color=cmap(j / max(1, width - 1)), markersize=3, label=f"j={j}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if its:
            ax.set_xlim(min(its) - 0.5, max(its) + 0.5)
        if 0 < len(its) <= 12:
            ax.set_xticks(its)  # few iterations: each its own tick (the locator would add fractions)
        else:
            _integer_ticks(ax)
        if log and ax.lines:
            ax.set_yscale("log")
    zero = [it.zero_std_groups if it.zero_std_groups is not None else np.nan for it in iterations]
    if not all(np.isnan(zero)):
        axes[1][1].plot(its, zero, "ks--", markersize=4, label="groups with zero std")
    for ax in (axes[0][0], axes[1][1]):
        ax.set_ylim(-0.03, 1.03)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
