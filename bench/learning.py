"""Learning efficiency on mini-GenEval: TP-GRPO modes against Flow-GRPO, per step and per compute.

From the shipped tiny checkpoint, every configuration trains with the same seeds for the same
wall-clock budget (its own compute time, measured per iteration), then its final EMA adapter is
evaluated on one fixed held-out set — every test prompt × `--replicates` with the same initial
noise for every run (paired comparisons) — with the `shapes` reward (accuracy and partial
credit) and its image-quality figures (background deviation, stray pixels, specks).

Configurations (`--configs`, default all):

| name | what |
|---|---|
| flow_grpo | terminal reward broadcast; no completions (Flow-GRPO's cost) |
| incremental, tp, tp_constrained | step-level rewards from ODE completions |
| flow_grpo_fast | flow_grpo on the first 3 steps only (the SDE window where composition is decided) |
| <mode>_kl | each mode with a small KL to the base (β = 0.01) |

Runs are resumable: each is a tpgrpo run under `--root`, its per-iteration timings in
`bench.json` beside it; rerunning skips finished iterations and evaluations. Results (JSON, PNG
curves against iterations, model evaluations and wall-clock) go to `bench/results/`.
`--quick`: 2 seeds × the four modes, tiny budget (< 10 minutes; smoke test of the pipeline only).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
EVAL_SEED = 1234
MODES = ("flow_grpo", "incremental", "tp", "tp_constrained")
BASE_CONFIGS: dict[str, list[str]] = {
    "flow_grpo": ["reward.mode=flow_grpo", "branch.completions=false"],
    "incremental": ["reward.mode=incremental"],
    "tp": ["reward.mode=tp"],
    "tp_constrained": ["reward.mode=tp_constrained"],
}
CONFIGS: dict[str, list[str]] = {
    **BASE_CONFIGS,
    "flow_grpo_fast": [*BASE_CONFIGS["flow_grpo"], "sampling.window_size=3"],
    **{f"{mode}_kl": [*sets, "update.kl_beta=0.01"] for mode, sets in BASE_CONFIGS.items()},
}


def run_dir(root: Path, name: str) -> Path:
    return root / name


def train_run(
    root: Path, config: str, seed: int, budget_s: float, extra: list[str], log: Any
) -> dict[str, Any]:
    """Train one configuration until its compute time reaches `budget_s` (resumable)."""
    from tpgrpo.config import load_config
    from tpgrpo.flows import steps
    from tpgrpo.storage import read_manifest

    sets = [*CONFIGS[config], f"seed={seed}", f"storage.root={root}", "iterations=1000", *extra]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    run_id = f"{config}-s{seed}"
    ctx = steps.RunContext.create(cfg, run_id, str(root))
    steps.init_run(ctx)
    progress_file = run_dir(root, run_id) / "bench.json"
    history: list[dict[str, Any]] = json.loads(progress_file.read_text()) if progress_file.is_file() else []
    spent = sum(h["seconds"] for h in history)
    i = len(history)
    while spent < budget_s:
        started = time.perf_counter()
        for stage in steps.STAGES:
            steps.run_stage(ctx, stage, i)
        seconds = time.perf_counter() - started
        layout = ctx.layout
        evals = sum(
            read_manifest(uri).model_evals
            for uri in (layout.rollouts(i), layout.branches(i), layout.updates(i))
        )
        ann = read_manifest(layout.annotations(i, ctx.reward_key(), cfg.reward.mode)).metrics
        history.append(
            {
                "iteration": i,
                "seconds": seconds,
                "model_evals": evals,
                "train_reward": ann["reward_final_mean"],
                "turning_points": ann["turning_points"],
                "kept": ann["kept"],
            }
        )
        progress_file.write_text(json.dumps(history, indent=1))
        spent += seconds
        log(
            f"{run_id}: iteration {i} in {seconds:.1f}s (total {spent:.0f}/{budget_s:.0f}s), "
            f"train reward {ann['reward_final_mean']:.3f}"
        )
        i += 1
    return {"run_id": run_id, "config": config, "seed": seed, "history": history, "iterations": i}


def evaluate_run(root: Path, run_id: str, checkpoint: int, replicates: int, steps: int) -> dict[str, Any]:
    """Score the EMA adapter of `checkpoint` on the fixed held-out set (cached in eval.json)."""
    cache = run_dir(root, run_id) / f"eval-{checkpoint}-{replicates}-{steps}.json"
    if cache.is_file():
        return json.loads(cache.read_text())  # type: ignore[no-any-return]
    from tpgrpo.cli.common import load_run
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.checkpoints import load_adapter
    from tpgrpo.stages.evaluate import evaluate
    from tpgrpo.world.prompts import load_prompts

    ctx = load_run(run_id, str(root))
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(checkpoint), policy, ema=True)
    prompts = [r.to_row() for r in load_prompts("test")]
    result = evaluate(
        policy,
        make_reward("shapes"),
        prompts,
        checkpoint=str(checkpoint),
        replicates=replicates,
        seed=EVAL_SEED,
        num_steps=steps,
        guidance_scale=ctx.cfg.sampling.guidance_scale,
        height=64,
        width=64,
        batch=32,
    )
    rows = result["rows"]
    details = [json.loads(d) for d in rows["details"]]
    out = {
        "checkpoint": checkpoint,
        "strict": [bool(s) for s in rows["strict"]],
        "score": rows["score"],
        "task": rows["task"],
        "quality": {k: [d[k] for d in details] for k in ("background_dev", "stray_frac", "specks")},
        "summary": result["summary"],
    }
    cache.write_text(json.dumps(out))
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t confidence interval."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float(a.mean()), float("nan")
    return float(a.mean()), float(stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=300.0, help="compute seconds per run")
    ap.add_argument("--replicates", type=int, default=6, help="seeds per test prompt (146 prompts)")
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--root", default=str(ROOT / "runs" / "bench-learning"))
    args = ap.parse_args()
    configs = args.configs or (list(MODES) if args.quick else list(CONFIGS))
    seeds = list(range(2 if args.quick else args.seeds))
    budget = 40.0 if args.quick else args.budget
    replicates = 1 if args.quick else args.replicates
    extra = ["rollout.batches_per_iteration=1"] if args.quick else []
    root = Path(args.root)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def log(message: str) -> None:
        print(message, flush=True)

    runs = [train_run(root, c, s, budget, extra, log) for c in configs for s in seeds]
    base = evaluate_run(root, runs[0]["run_id"], 0, replicates, args.eval_steps)
    for r in runs:
        r["eval"] = evaluate_run(root, r["run_id"], r["iterations"], replicates, args.eval_steps)
        log(f"{r['run_id']}: {r['iterations']} iterations, eval strict {np.mean(r['eval']['strict']):.3f}")
    summary = summarize(runs, base)
    report(summary, runs, base)
    out = {
        "quick": args.quick,
        "budget_s": budget,
        "seeds": seeds,
        "eval_images": len(base["strict"]),
        "eval_steps": args.eval_steps,
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "eval"} | {"eval": r["eval"]["summary"]} for r in runs],
        "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / ("learning_quick.json" if args.quick else "learning.json")).write_text(
        json.dumps(out, indent=1)
    )


def summarize(runs: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Per configuration: accuracy (mean ± 95 % CI over seeds), paired difference to flow_grpo,
    quality figures, cost, and turning-point statistics."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_config.setdefault(r["config"], []).append(r)
    reference = {r["seed"]: np.asarray(r["eval"]["strict"], float) for r in by_config.get("flow_grpo", [])}
    curves = {c: _mean_curve(rs) for c, rs in by_config.items()}
    target = curves["flow_grpo"]["reward"][-1] if "flow_grpo" in curves else None
    out: dict[str, Any] = {
        "base": {
            "strict": float(np.mean(base["strict"])),
            "score": float(np.mean(base["score"])),
            **{k: float(np.mean(v)) for k, v in base["quality"].items()},
        }
    }
    for config, rs in by_config.items():
        strict = [float(np.mean(r["eval"]["strict"])) for r in rs]
        score = [float(np.mean(r["eval"]["score"])) for r in rs]
        diffs = [
            float(np.mean(np.asarray(r["eval"]["strict"], float) - reference[r["seed"]]))
            for r in rs
            if r["seed"] in reference
        ]
        tps = [h["turning_points"] for r in rs for h in r["history"]]
        kept = [h["kept"] for r in rs for h in r["history"]]
        out[config] = {
            "strict": mean_ci(strict),
            "score": mean_ci(score),
            "paired_diff_vs_flow_grpo": mean_ci(diffs) if diffs else None,
            "iterations": float(np.mean([r["iterations"] for r in rs])),
            "model_evals_per_iteration": float(np.mean([h["model_evals"] for r in rs for h in r["history"]])),
            "seconds_per_iteration": float(np.mean([h["seconds"] for r in rs for h in r["history"]])),
            "turning_points_per_iteration": float(np.mean(tps)),
            "kept_per_iteration": float(np.mean(kept)),
            "quality": {
                k: float(np.mean([np.mean(r["eval"]["quality"][k]) for r in rs]))
                for k in ("background_dev", "stray_frac", "specks")
            },
            "reaches_flow_grpo_final": _first_reach(curves[config], target),
            "per_task_strict": {
                t: float(
                    np.mean(
                        [
                            np.mean(
                                [
                                    s
                                    for s, tt in zip(r["eval"]["strict"], r["eval"]["task"], strict=True)
                                    if tt == t
                                ]
                            )
                            for r in rs
                        ]
                    )
                )
                for t in sorted(set(base["task"]))
            },
        }
    return out


def _mean_curve(rs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Train reward, cumulative model evaluations and seconds per iteration, averaged over seeds."""
    n = min(len(r["history"]) for r in rs)
    hist = [r["history"][:n] for r in rs]
    return {
        "reward": np.mean([[h["train_reward"] for h in h_] for h_ in hist], axis=0),
        "evals": np.cumsum(np.mean([[h["model_evals"] for h in h_] for h_ in hist], axis=0)),
        "seconds": np.cumsum(np.mean([[h["seconds"] for h in h_] for h_ in hist], axis=0)),
    }


def _first_reach(curve: dict[str, np.ndarray], target: float | None) -> dict[str, float] | None:
    """Iteration (1-based), evaluations and seconds at which the curve first reaches `target`."""
    if target is None:
        return None
    hit = np.nonzero(curve["reward"] >= target)[0]
    if hit.size == 0:
        return None
    i = int(hit[0])
    return {
        "iteration": i + 1,
        "model_evals": float(curve["evals"][i]),
        "seconds": float(curve["seconds"][i]),
    }


def report(summary: dict[str, Any], runs: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Print the table and draw train-reward curves against iterations, evaluations and seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print(f"base: strict {summary['base']['strict']:.3f}, score {summary['base']['score']:.3f}")
    print(
        f"{'config':<20}{'iters':>6}{'strict':>16}{'vs flow_grpo':>18}{'evals/it':>10}{'s/it':>7}"
        f"{'TP/it':>7}{'kept':>6}{'bg dev':>8}{'stray':>8}"
    )
    for config, v in summary.items():
        if config == "base":
            continue
        d = v["paired_diff_vs_flow_grpo"]
        diff = f"{d[0]:+.3f}±{d[1]:.3f}" if d else "-"
        print(
            f"{config:<20}{v['iterations']:>6.1f}{v['strict'][0]:>9.3f}±{v['strict'][1]:.3f}{diff:>18}"
            f"{v['model_evals_per_iteration']:>10.0f}{v['seconds_per_iteration']:>7.1f}"
            f"{v['turning_points_per_iteration']:>7.1f}{v['kept_per_iteration']:>6.1f}"
            f"{v['quality']['background_dev']:>8.4f}{v['quality']['stray_frac']:>8.4f}"
        )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for config in sorted({r["config"] for r in runs}):
        curve = _mean_curve([r for r in runs if r["config"] == config])
        xs = (np.arange(1, len(curve["reward"]) + 1), curve["evals"], curve["seconds"])
        for ax, x in zip(axes, xs, strict=True):
            ax.plot(x, curve["reward"], label=config)
    for ax, label in zip(axes, ("iteration", "model evaluations", "seconds"), strict=True):
        ax.set_xlabel(label)
        ax.set_ylabel("train reward (mean final score)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "learning_curves.png", dpi=110)


if __name__ == "__main__":
    main()
