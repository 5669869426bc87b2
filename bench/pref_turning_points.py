"""Turning points on the dense `shapes_pref` reward beside the `shapes` detector, on one stored run.

One command trains (or resumes) a short run of `configs/tiny.yaml` with its branch completions,
re-annotates its `shapes` scores in the step-level modes, rescores the same branch images with
`shapes_pref` (`tpgrpo rescore`: nothing is generated again) and compares, per reward and mode:

- **non-zero d_j**: share of transitions whose increment `d_j = ρ_{j+1} − ρ_j` is not exactly 0,
  by trained step `j` (issue 17 asks ≥ 90 % at every step for `shapes_pref`);
- **turning points**: detected and kept (after balancing) rate by step, in all, and the share
  balancing removes, with the sign balance;
- **magnitudes**: mean `|r_agg_j|` at kept turning points against the mean `|d_j|` they replace,
  and mean `|d_j|` and `|r_agg_j|` over every transition;
- the mean reward by boundary `j` (ρ_j) of both rewards.

Prints Markdown tables and writes `bench/results/pref_turning_points.json`.

```
.venv/bin/python bench/pref_turning_points.py                       # 2 iterations under ./runs
.venv/bin/python bench/pref_turning_points.py --root /tmp/runs --run-id pref-tp --iterations 2
```
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "pref_turning_points.json"
MODES = ("incremental", "tp", "tp_constrained")
REWARDS = ("shapes", "shapes_pref")
COLUMNS = ["trajectory_id", "step", "increment", "aggregated", "turning_point", "kept"]


def mode_stats(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Turning-point and increment statistics of annotation rows (all iterations together).

    Args:
        columns (`dict[str, np.ndarray]`): `COLUMNS`, one row per (trajectory, trained step).

    Returns:
        `dict`: the statistics of the module docstring.
    """
    step = columns["step"].astype(np.int64)  # [R]
    d = columns["increment"].astype(np.float64)  # [R]
    r_agg = columns["aggregated"].astype(np.float64)  # [R]
    tp, kept = columns["turning_point"].astype(bool), columns["kept"].astype(bool)  # [R], [R]
    w = int(step.max()) + 1
    by_step = [step == j for j in range(w)]
    detected, n_kept = int(tp.sum()), int(kept.sum())
    return {
        "transitions": int(step.size),
        "nonzero_increment": float((d != 0).mean()),
        "nonzero_increment_by_step": [float((d[m] != 0).mean()) for m in by_step],
        "d_abs_by_step": [float(np.abs(d[m]).mean()) for m in by_step],
        "detected": detected,
        "kept": n_kept,
        "detected_rate": detected / step.size,
        "kept_rate": n_kept / step.size,
        "detected_by_step": [float(tp[m].mean()) for m in by_step],
        "kept_by_step": [float(kept[m].mean()) for m in by_step],
        "removed_by_balancing": (detected - n_kept) / detected if detected else None,
        "signs": {
            "detected_pos": int((tp & (r_agg > 0)).sum()),
            "detected_neg": int((tp & (r_agg < 0)).sum()),
            "kept_pos": int((kept & (r_agg > 0)).sum()),
            "kept_neg": int((kept & (r_agg < 0)).sum()),
        },
        "r_agg_abs_at_kept": float(np.abs(r_agg[kept]).mean()) if n_kept else None,
        "d_abs_at_kept": float(np.abs(d[kept]).mean()) if n_kept else None,
        "d_abs": float(np.abs(d).mean()),
        "r_agg_abs": float(np.abs(r_agg).mean()),
    }


def pref_parts(root: str, run_id: str, iterations: int) -> dict[str, list[float]]:
    """Where `shapes_pref`'s increments come from, by trained step j.

    With `score = C (1 + Q) / 2`, `d_j = ΔC (1 + Q_{j+1}) / 2 + C_j ΔQ / 2` exactly: a content part
    and a quality part. From the stored details (rounded to 4 decimals): their mean absolute values
    and the share of transitions whose content credit did not change at all.
    """
    from tpgrpo.storage import read_table
    from tpgrpo.storage.layout import RunLayout

    layout = RunLayout(root, run_id)
    content: dict[tuple[int, int], dict[int, tuple[float, float]]] = {}
    for i in range(iterations):
        t = read_table(
            layout.rewards(i, "shapes_pref"), "rewards", columns=["trajectory_id", "boundary", "details"]
        )
        for tid, j, text in zip(
            *(t.column(c).to_pylist() for c in ("trajectory_id", "boundary", "details")), strict=True
        ):
            d = json.loads(text)
            content.setdefault((i, tid), {})[j] = (d["content"], sum(d["quality"].values()) / 4)
    w = max(max(v) for v in content.values())
    rows = np.array([[v[j] for j in range(w + 1)] for v in content.values()])  # [N, W+1, 2]
    c, q = rows[..., 0], rows[..., 1]
    dc, dq = np.diff(c, axis=1), np.diff(q, axis=1)  # [N, W]
    return {
        "content_part_abs_by_step": np.abs(dc * (1 + q[:, 1:]) / 2).mean(0).tolist(),
        "quality_part_abs_by_step": np.abs(c[:, :-1] * dq / 2).mean(0).tolist(),
        "content_unchanged_by_step": (dc == 0).mean(0).tolist(),
    }


def collect(root: str, run_id: str, iterations: int) -> dict[str, Any]:
    """Read the run's rewards and annotations of both rewards and summarise them."""
    from tpgrpo.storage import read_table
    from tpgrpo.storage.layout import RunLayout

    layout = RunLayout(root, run_id)
    out: dict[str, Any] = {}
    for key in REWARDS:
        rho = [
            read_table(layout.rewards(i, key), "rewards", columns=["boundary", "score"])
            for i in range(iterations)
        ]
        boundary = np.concatenate([t.column("boundary").to_numpy() for t in rho])
        score = np.concatenate([t.column("score").to_numpy() for t in rho])
        entry: dict[str, Any] = {
            "mean_rho_by_boundary": [
                float(score[boundary == j].mean()) for j in range(int(boundary.max()) + 1)
            ],
            "modes": {},
        }
        for mode in MODES:
            tables = [
                read_table(layout.annotations(i, key, mode), "annotations", columns=COLUMNS)
                for i in range(iterations)
            ]
            cols = {c: np.concatenate([t.column(c).to_numpy() for t in tables]) for c in COLUMNS}
            entry["modes"][mode] = mode_stats(cols)
        out[key] = entry
    return out


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def report(stats: dict[str, Any]) -> str:
    """Markdown tables of `collect`'s result."""
    lines = ["**non-zero increments d_j by trained step j** (all modes share them)", ""]
    lines += [
        "| reward | non-zero, all | non-zero by step j = 0 … W−1 | mean abs(d_j) by step "
        "| mean ρ_j by boundary |",
        "|---|---|---|---|---|",
    ]
    for key, e in stats.items():
        m = e["modes"]["incremental"]
        lines.append(
            f"| {key} | {m['nonzero_increment']:.3f} | {_fmt(m['nonzero_increment_by_step'])} | "
            f"{' '.join(f'{v:.3f}' for v in m['d_abs_by_step'])} | {_fmt(e['mean_rho_by_boundary'])} |"
        )
    parts = stats["shapes_pref"].get("parts")
    if parts:
        lines += ["", "**where shapes_pref's increments come from** (d_j = content part + quality part)", ""]
        lines += ["| by step j = 0 … W−1 | values |", "|---|---|"]
        lines.append(
            f"| mean abs(content part) | {' '.join(f'{v:.3f}' for v in parts['content_part_abs_by_step'])} |"
        )
        lines.append(
            f"| mean abs(quality part) | {' '.join(f'{v:.3f}' for v in parts['quality_part_abs_by_step'])} |"
        )
        lines.append(f"| content unchanged | {_fmt(parts['content_unchanged_by_step'])} |")
    lines += ["", "**turning points**", ""]
    lines += [
        "| reward | mode | detected | kept | removed by balancing | kept rate | kept by step | "
        "signs kept +/− | mean abs(r_agg) vs abs(d) at kept | mean abs(d), abs(r_agg) all |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in stats.items():
        for mode in ("tp", "tp_constrained"):
            m = e["modes"][mode]
            removed = "-" if m["removed_by_balancing"] is None else f"{m['removed_by_balancing']:.2f}"
            mag = (
                "-"
                if m["r_agg_abs_at_kept"] is None
                else f"{m['r_agg_abs_at_kept']:.4f} vs {m['d_abs_at_kept']:.4f} "
                f"(×{m['r_agg_abs_at_kept'] / max(m['d_abs_at_kept'], 1e-12):.1f})"
            )
            s = m["signs"]
            lines.append(
                f"| {key} | {mode} | {m['detected']} | {m['kept']} | {removed} | {m['kept_rate']:.3f} | "
                f"{_fmt(m['kept_by_step'])} | +{s['kept_pos']}/−{s['kept_neg']} | {mag} | "
                f"{m['d_abs']:.4f}, {m['r_agg_abs']:.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs"), help="runs root (default ./runs)")
    ap.add_argument("--run-id", default="pref-tp", help="run to train or reuse")
    ap.add_argument("--iterations", type=int, default=2, help="iterations to train and compare")
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    run = ["--run", args.run_id, "--root", args.root]
    iters = f"0:{args.iterations}"
    seconds = {
        "train": run_cli(
            "train",
            args.config,
            "--run-id",
            args.run_id,
            "--iterations",
            str(args.iterations),
            "--root",
            args.root,
        ).wall_s,
        "annotate_shapes": run_cli(
            "annotate", *run, "--reward", "shapes", "--iters", iters, *[f"--mode={m}" for m in MODES]
        ).wall_s,
        "rescore_shapes_pref": run_cli(
            "rescore", *run, "--reward", "shapes_pref", "--iters", iters, *[f"--mode={m}" for m in MODES]
        ).wall_s,
    }
    stats = collect(args.root, args.run_id, args.iterations)
    stats["shapes_pref"]["parts"] = pref_parts(args.root, args.run_id, args.iterations)
    result = {
        "run_id": args.run_id,
        "config": Path(args.config).name,
        "iterations": args.iterations,
        "seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rewards": stats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(stats))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
