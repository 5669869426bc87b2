"""Report plots (matplotlib, Agg backend): reward curves and turning-point statistics.

Each function takes plain series (no storage access) and writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def reward_curves(rows: Mapping[str, Sequence[Series]], path: str, title: str) -> None:
    """Per reward key one row of three panels: reward against iteration, model evaluations, wall-clock.

    Args:
        rows (`Mapping[str, Sequence[Series]]`): reward key -> its curves (train and/or eval);
            each key gets its own y axis, since rewards of different models do not share a scale.
        path (`str`): the PNG to write.
        title (`str`): the figure title.
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
            ax.set_ylabel(f"reward ({key})")
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
