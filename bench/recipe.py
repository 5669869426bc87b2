"""The training recipe, one factor at a time: which defaults make the tiny model measurably better.

Every variant changes one setting of the reference recipe (Flow-GRPO advantages, no completions,
lr 1e-3, SPEC §2's default window, 64 trajectories per iteration, two optimizer steps with clip
ε 1e-4, exact `cps` log-prob, no KL, EMA weights evaluated). Each trains from the shipped tiny
checkpoint for the same CPU budget with the same seeds, then its final checkpoint is evaluated on
the fixed held-out set of `bench/learning.py` (every test prompt × `--replicates`, the same
initial noise for every run), so each run's change over the base (checkpoint 0) is a paired
difference over the same images, and each variant's change over the reference is paired by seed.

| variant | changes |
|---|---|
| reference | the reference recipe |
| reference_cps | `exact_cps_logprob=false` (the reference code's log-prob, constants dropped) |
| one_step | `update.optimizer_steps=1` (one on-policy step: the ratio is 1, nothing clips) |
| lr_3e-3 | `update.lr=3e-3` |
| traj_32 | 32 trajectories per iteration (`rollout.batches_per_iteration=1`) |
| kl | `update.kl_beta=0.01` |
| signal_tasks | trains on the tasks with signal only (`rollout.tasks=[counting, color_attr]`, see
  bench/results/signal_share.json); evaluated on every task, like the others |

The reference's runs are also evaluated with their live (not EMA) weights: the EMA question costs
one more evaluation per seed, no training.

Runs go side by side in `--workers` one-thread processes (`bench/learning.py`'s machinery: CPU-time
budgets, resumable runs under `--root`, cached evaluations). Rerun the same command to resume.
Results: a table on the console and in `bench/results/recipe.md`, JSON in `bench/results/recipe.json`.

```
.venv/bin/python bench/recipe.py                       # 7 variants × 3 seeds, 600 CPU-s each
.venv/bin/python bench/recipe.py --report-only         # the table of what has finished
```
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import learning  # bench/learning.py: runs, CPU-time budgets, the paired held-out evaluation
import numpy as np

ROOT = learning.ROOT
RESULTS = learning.RESULTS
REFERENCE = ["reward.mode=flow_grpo", "branch.completions=false", "update.lr=1e-3"]
VARIANTS: dict[str, list[str]] = {
    "reference": [],
    "reference_cps": ["sampling.exact_cps_logprob=false"],
    "one_step": ["update.optimizer_steps=1"],
    "lr_3e-3": ["update.lr=3e-3"],
    "traj_32": ["rollout.batches_per_iteration=1"],
    "kl": ["update.kl_beta=0.01"],
    "signal_tasks": ["rollout.tasks=[counting, color_attr]"],
}
QUALITY = ("background_dev", "stray_frac", "specks")


def variant_sets(variant: str) -> list[str]:
    return [*REFERENCE, *VARIANTS[variant]]


def train_and_evaluate(
    root: Path, variant: str, seed: int, budget: float, replicates: int, steps: int
) -> dict[str, Any]:
    """One run (in a worker): train within the budget, evaluate its final EMA weights (and, for the
    reference, its live weights)."""
    r = learning.train_run(root, variant, seed, budget, [], learning._log, variant_sets(variant))
    r["eval"] = learning.evaluate_run(root, r["run_id"], r["iterations"], replicates, steps)
    if variant == "reference":
        r["eval_live"] = learning.evaluate_run(
            root, r["run_id"], r["iterations"], replicates, steps, ema=False
        )
    learning._log(
        f"{r['run_id']}: {r['iterations']} iterations, eval score {np.mean(r['eval']['score']):.4f}"
    )
    return r


def finished(root: Path, variant: str, seed: int, replicates: int, steps: int) -> dict[str, Any] | None:
    """A run whose training and evaluations are stored (None while it is unfinished)."""
    run_id = f"{variant}-s{seed}"
    progress = learning.run_dir(root, run_id) / "bench.json"
    if not progress.is_file():
        return None
    history = json.loads(progress.read_text())
    n = len(history)
    caches = {"eval": learning.eval_cache(root, run_id, n, replicates, steps)}
    if variant == "reference":
        caches["eval_live"] = learning.eval_cache(root, run_id, n, replicates, steps, ema=False)
    if not all(c.is_file() for c in caches.values()):
        return None
    run = {"run_id": run_id, "config": variant, "seed": seed, "history": history, "iterations": n}
    return run | {k: json.loads(c.read_text()) for k, c in caches.items()}


def summarize(runs: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Per variant: paired changes over the base (same images) and over the reference (same seed),
    mean ± 95 % CI over seeds, per task and for image quality; cost per iteration."""
    base_score, base_strict = np.asarray(base["score"]), np.asarray(base["strict"], float)
    tasks = sorted(set(base["task"]))
    task_of = np.asarray(base["task"])
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["config"], {})[r["seed"]] = r
    ref = by.get("reference", {})

    def change(r: dict[str, Any], key: str = "eval") -> dict[str, float]:
        score, strict = np.asarray(r[key]["score"]), np.asarray(r[key]["strict"], float)
        out = {"score": float((score - base_score).mean()), "strict": float((strict - base_strict).mean())}
        for t in tasks:
            out[f"score.{t}"] = float((score - base_score)[task_of == t].mean())
        for q in QUALITY:
            out[q] = float(np.mean(r[key]["quality"][q]))
        return out

    out: dict[str, Any] = {
        "base": {
            "score": float(base_score.mean()),
            "strict": float(base_strict.mean()),
            "quality": {q: float(np.mean(base["quality"][q])) for q in QUALITY},
            "images_per_task": {t: int((task_of == t).sum()) for t in tasks},
        }
    }
    for variant, seeds in by.items():
        changes = {s: change(r) for s, r in seeds.items()}
        keys = list(next(iter(changes.values())))
        row: dict[str, Any] = {
            "seeds": sorted(seeds),
            "iterations": float(np.mean([r["iterations"] for r in seeds.values()])),
            "seconds_per_iteration": float(
                np.mean([h["seconds"] for r in seeds.values() for h in r["history"]])
            ),
            "paired_diff_vs_base": {k: learning.mean_ci([c[k] for c in changes.values()]) for k in keys},
        }
        common = [s for s in seeds if s in ref]
        if variant != "reference" and common:
            ref_changes = {s: change(ref[s]) for s in common}
            row["paired_diff_vs_reference"] = {
                k: learning.mean_ci([changes[s][k] - ref_changes[s][k] for s in common])
                for k in ("score", "strict")
            }
        out[variant] = row
    live = [change(r, "eval_live") for r in ref.values() if "eval_live" in r]
    if live:
        ema = [change(r) for r in ref.values() if "eval_live" in r]
        out["reference_live_weights"] = {
            "paired_diff_vs_base": {k: learning.mean_ci([c[k] for c in live]) for k in ("score", "strict")},
            "live_minus_ema": {
                k: learning.mean_ci([a[k] - b[k] for a, b in zip(live, ema, strict=True)])
                for k in ("score", "strict")
            },
        }
    return out


def _ci(v: tuple[float, float] | list[float] | None, scale: float = 1.0) -> str:
    if v is None:
        return "—"
    mean, half = v
    return f"{mean * scale:+.4f} ± {half * scale:.4f}" if half == half else f"{mean * scale:+.4f}"


def table(summary: dict[str, Any], budget: float, images: int) -> str:
    """The Markdown table of bench/results/recipe.md."""
    base = summary["base"]
    lines = [
        f"Base (checkpoint 0): mean score {base['score']:.4f}, strict {base['strict']:.3f} on {images} "
        f"held-out images. Budget {budget:.0f} CPU-s per run. Changes: paired mean ± 95 % CI over seeds.",
        "",
        "| variant | seeds | iterations | s/iter | score vs base | strict vs base "
        "| score vs reference | counting | color_attr | position | specks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        row = summary.get(variant)
        if row is None:
            continue
        d = row["paired_diff_vs_base"]
        lines.append(
            f"| {variant} | {len(row['seeds'])} | {row['iterations']:.1f} "
            f"| {row['seconds_per_iteration']:.1f} "
            f"| {_ci(d['score'])} | {_ci(d['strict'])} "
            f"| {_ci(row.get('paired_diff_vs_reference', {}).get('score'))} "
            f"| {_ci(d.get('score.counting'))} | {_ci(d.get('score.color_attr'))} "
            f"| {_ci(d.get('score.position'))} | {d['specks'][0]:.3f} |"
        )
    live = summary.get("reference_live_weights")
    if live:
        lines += [
            "",
            f"Reference evaluated with live instead of EMA weights: score vs base "
            f"{_ci(live['paired_diff_vs_base']['score'])}, live − EMA {_ci(live['live_minus_ema']['score'])} "
            f"(strict {_ci(live['live_minus_ema']['strict'])}).",
        ]
    lines.append(f"\nBase specks {base['quality']['specks']:.3f}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=600.0, help="CPU seconds per run (one thread)")
    ap.add_argument("--replicates", type=int, default=6, help="seeds per test prompt (146 prompts)")
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--root", default=str(ROOT / "runs" / "bench-recipe"))
    ap.add_argument("--report-only", action="store_true", help="the table of the runs finished so far")
    args = ap.parse_args()
    root = Path(args.root)
    # seed by seed, so an interrupted sweep is a balanced one
    jobs = [(v, s) for s in range(args.seeds) for v in args.variants]
    base_run = f"{jobs[0][0]}-s{jobs[0][1]}"
    if not args.report_only:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=learning._one_thread, max_tasks_per_child=1
        ) as pool:
            pool.submit(
                learning.create_run, root, jobs[0][0], jobs[0][1], [], variant_sets(jobs[0][0])
            ).result()
            base_future = pool.submit(
                learning.evaluate_run, root, base_run, 0, args.replicates, args.eval_steps
            )
            futures = [
                pool.submit(train_and_evaluate, root, v, s, args.budget, args.replicates, args.eval_steps)
                for v, s in jobs
            ]
            for f in futures:
                f.result()
            base_future.result()
    found = [finished(root, v, s, args.replicates, args.eval_steps) for v, s in jobs]
    runs = [r for r in found if r is not None]
    missing = [f"{v}-s{s}" for (v, s), r in zip(jobs, found, strict=True) if r is None]
    print(f"{len(runs)} of {len(jobs)} runs finished; missing: {', '.join(missing) or 'none'}")
    if not runs:
        raise SystemExit(f"no finished run under {root}")
    learning.create_run(root, jobs[0][0], jobs[0][1], [], variant_sets(jobs[0][0]))
    base = learning.evaluate_run(root, base_run, 0, args.replicates, args.eval_steps)
    summary = summarize(runs, base)
    text = table(summary, args.budget, len(base["score"]))
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "recipe.md").write_text(text + "\n")
    out = {
        "budget_s": args.budget,
        "seeds": args.seeds,
        "replicates": args.replicates,
        "eval_steps": args.eval_steps,
        "missing_runs": missing,
        "reference": REFERENCE,
        "variants": VARIANTS,
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if not k.startswith("eval")} for r in runs],
    }
    (RESULTS / "recipe.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
