"""Cheaper step rewards (issue 18): each `branch.estimator` against `exact` on one stored run.

One command trains (or resumes) a short run of `configs/tiny.yaml` with its exact branch
completions, then, for every iteration, rebuilds the branches with each estimator through the
branch stage itself (`tpgrpo.stages.branch.run_shard`, the run's own checkpoint, the estimator set
in a copy of the run's config) into a separate folder — `<root>-step_rewards/<run>/<estimator>/` —
so the run's exact branches are never touched; scores them with `shapes` and `shapes_pref` (the
stored exact branches get `shapes_pref` scores there too), annotates in memory (the run's reward
switches; balancing scope: the rollout batch) and compares with `exact`:

- **sign agreement** of the increments `d_j = ρ_{j+1} − ρ_j`, by trained step `j`: the share of
  transitions where `sgn(d_j)` equals the exact one (`sgn(0) = 0`); also over the transitions whose
  exact `d_j ≠ 0` only (the discrete `shapes` reward leaves most increments at exactly 0);
- **turning points** (`tp_constrained`, the run's mode, and plain `tp`): precision and recall of
  the detected (and of the kept, after balancing) turning points against exact's;
- **Spearman rank correlation** of the step rewards (`tp_constrained`), pooled and by step;
- **cost** per iteration: model evaluations, decodes and reward calls, and their ratios to
  Flow-GRPO's (rollout only + one score of each final image). `cost_ratio_to_flow` is the ratio
  of model evaluations of rollout + branch; `cost_ratio_to_flow_per_iteration` adds the update's
  evaluations (the run's own, to both sides), as issue 18's "3.5×".

`prefix:K` is derived from the exact scores (`ρ_j` for `j < K`, `ρ_W` after: what its branch rows
hold, for a deterministic reward) instead of being sampled again; its cost is counted, and
`--sample-prefix` runs the stage for it too (costs as much as the exact completions of j < K).

```
.venv/bin/python bench/step_rewards.py --root /tmp/wt18-runs            # 2 iterations of tiny.yaml
.venv/bin/python bench/step_rewards.py --root /tmp/wt18-runs --run-id sr-base --iterations 2
```
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "step_rewards.json"
REWARDS = ("shapes", "shapes_pref")
SAMPLED = ("coarse:2", "coarse:3", "x0")
PREFIXES = (2, 4)
# SD3.5-Medium size on an H200 (bench/README.md, gpu_sd35m.py): 720 CFG evaluations in 16.3 s,
# 144 decodes in ~2.2 s. Used only for the `sd35m_seconds_ratio_to_flow` estimate.
SD35M_EVAL_S = 16.3 / 720
SD35M_DECODE_S = 2.2 / 144


def _overrides(label: str) -> list[str]:
    name, _, arg = label.partition(":")
    if name == "coarse":
        return ["branch.estimator=coarse", f"branch.coarse_steps={arg or 2}"]
    return [f"branch.estimator={label}"]


# --- metrics ---------------------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1 … n, ties averaged."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson of tie-averaged ranks); None when one side is constant."""
    ra, rb = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _pr(est: np.ndarray, ref: np.ndarray) -> tuple[float | None, float | None]:
    both = int((est & ref).sum())
    return (both / int(est.sum()) if est.any() else None, both / int(ref.sum()) if ref.any() else None)


def compare(
    rho: np.ndarray, exact: np.ndarray, scope: np.ndarray, ids: np.ndarray, cfg: Any
) -> dict[str, Any]:
    """An estimator's boundary rewards against exact ones (same trajectories, rows in the same order).

    Args:
        rho, exact (`np.ndarray`): `[N, W + 1]` boundary rewards.
        scope, ids (`np.ndarray`): `[N]` balancing scope (iteration·1000 + batch) and trajectory ids.
    """
    from tpgrpo.algorithm import AnnotationConfig, annotate

    r = cfg.reward
    sd, sx = np.sign(np.diff(rho, axis=1)), np.sign(np.diff(exact, axis=1))  # [N, W]
    nonzero = sx != 0
    out: dict[str, Any] = {
        "sign_agreement": float((sd == sx).mean()),
        "sign_agreement_by_step": (sd == sx).mean(0).tolist(),
        "sign_agreement_nonzero": float((sd == sx)[nonzero].mean()) if nonzero.any() else None,
        "sign_agreement_nonzero_by_step": [
            float((sd[:, j] == sx[:, j])[nonzero[:, j]].mean()) if nonzero[:, j].any() else None
            for j in range(sd.shape[1])
        ],
        "exact_nonzero_by_step": nonzero.mean(0).tolist(),
        "trend_sign_agreement": float(
            (np.sign(rho[:, -1] - rho[:, 0]) == np.sign(exact[:, -1] - exact[:, 0])).mean()
        ),
    }
    for mode in ("tp_constrained", "tp"):
        conf = AnnotationConfig(mode, initial_step=r.initial_step, balance=r.balance)
        a, x = annotate(rho, scope, conf, ids), annotate(exact, scope, conf, ids)
        p, rc = _pr(a.turning_point, x.turning_point)
        kp, krc = _pr(a.kept, x.kept)
        entry = {
            "tp_precision": p,
            "tp_recall": rc,
            "kept_precision": kp,
            "kept_recall": krc,
            "detected": int(a.turning_point.sum()),
            "detected_exact": int(x.turning_point.sum()),
            "detected_by_step": a.turning_point.mean(0).tolist(),
            "detected_exact_by_step": x.turning_point.mean(0).tolist(),
            "recall_by_step": [
                _pr(a.turning_point[:, j], x.turning_point[:, j])[1] for j in range(sd.shape[1])
            ],
            "spearman_step_reward": spearman(a.step_reward, x.step_reward),
            "spearman_step_reward_by_step": [
                spearman(a.step_reward[:, j], x.step_reward[:, j]) for j in range(sd.shape[1])
            ],
        }
        out[mode] = entry
    return out


# --- reading and rebuilding ------------------------------------------------------------------------


def rho_matrix(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """`(trajectory ids [N], ρ [N, W + 1])` of a rewards dataset."""
    from tpgrpo.storage import read_table

    t = read_table(uri, "rewards", columns=["trajectory_id", "boundary", "score"])
    tid, j, score = (np.asarray(t.column(c).to_pylist()) for c in ("trajectory_id", "boundary", "score"))
    ids = np.unique(tid)
    rho = np.full((ids.size, int(j.max()) + 1), np.nan)
    rho[np.searchsorted(ids, tid), j] = score
    assert np.isfinite(rho).all(), f"{uri}: missing boundaries"
    return ids, rho


def _finished(uri: str) -> bool:
    return (Path(uri) / "_MANIFEST.json").is_file()


def _fresh(uri: str) -> None:
    if Path(uri).exists():
        shutil.rmtree(uri)


def rebuild(ctx: dict[str, Any], label: str, iteration: int, out: str) -> dict[str, Any]:
    """The branch stage with estimator `label` on the run's rollouts of `iteration` into `out`."""
    from tpgrpo.config import load_config_data
    from tpgrpo.pipeline.lineage import stage_config_hash
    from tpgrpo.stages import branch
    from tpgrpo.stages.checkpoints import load_adapter
    from tpgrpo.storage import finalize_dataset, manifest_hash, read_manifest

    layout = ctx["layout"]
    if _finished(out):
        m = read_manifest(out)
        return {"model_evals": m.model_evals, **m.metrics, "seconds": m.timings.get("compute_s", 0.0)}
    _fresh(out)
    cfg = load_config_data(ctx["cfg"].public_dict(), _overrides(label))
    load_adapter(layout.checkpoint(iteration), ctx["policy"])
    stats = branch.run_shard(
        cfg, ctx["policy"], iteration=iteration, rollouts_uri=layout.rollouts(iteration), output=out
    )
    metrics = {k: v for k, v in stats.items() if k not in ("seconds", "model_evals")}
    metrics["estimator"] = label
    finalize_dataset(
        out,
        "branches",
        inputs={"rollouts": manifest_hash(layout.rollouts(iteration))},
        config_hash=stage_config_hash(cfg, "branch"),
        model_evals=int(stats["model_evals"]),
        metrics=metrics,
        timings={"compute_s": stats["seconds"]},
        shards=1,
    )
    return {"model_evals": int(stats["model_evals"]), **metrics, "seconds": stats["seconds"]}


def score_into(ctx: dict[str, Any], key: str, iteration: int, branches: str, out: str) -> float:
    """Score `branches` with reward `key` into `out` (skipped when finished); seconds spent."""
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages import score
    from tpgrpo.storage import finalize_dataset

    if _finished(out):
        return 0.0
    _fresh(out)
    started = time.perf_counter()
    score.run_shard(
        make_reward(key),
        iteration=iteration,
        rollouts_uri=ctx["layout"].rollouts(iteration),
        branches_uri=branches,
        output=out,
    )
    finalize_dataset(out, "rewards", inputs={}, config_hash=key, shards=1)
    return time.perf_counter() - started


# --- main ------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from tpgrpo.config import load_config_data
    from tpgrpo.models import load_policy
    from tpgrpo.models.lora import add_lora
    from tpgrpo.storage import read_manifest, read_run_record, read_table
    from tpgrpo.storage.layout import RunLayout

    layout = RunLayout(args.root, args.run_id)
    seconds: dict[str, float] = {}
    if not all(_finished(layout.updates(i)) for i in range(args.iterations)):
        seconds["train"] = run_cli(
            "train",
            args.config,
            "--run-id",
            args.run_id,
            "--iterations",
            str(args.iterations),
            "--root",
            args.root,
        ).wall_s
    record = read_run_record(layout)
    assert record is not None
    cfg = load_config_data(record["config"])
    policy = load_policy(cfg.model)
    add_lora(policy, rank=cfg.update.lora_rank, alpha=cfg.update.lora_alpha, seed=cfg.seed)
    ctx = {"layout": layout, "cfg": cfg, "policy": policy}
    work = Path(f"{args.root.rstrip('/')}-step_rewards") / args.run_id

    sampled = list(args.estimators) + ([f"prefix:{k}" for k in args.prefixes] if args.sample_prefix else [])
    rho: dict[str, dict[str, list[np.ndarray]]] = {}  # estimator -> reward -> per-iteration ρ
    meta: dict[str, list[np.ndarray]] = {"scope": [], "ids": []}
    costs: dict[str, list[dict[str, Any]]] = {}
    base: list[dict[str, float]] = []
    for i in range(args.iterations):
        roll = read_table(layout.rollouts(i), "rollouts", columns=["trajectory_id", "batch", "window_size"])
        roll = roll.sort_by("trajectory_id")
        ids = np.asarray(roll.column("trajectory_id").to_pylist())
        n, w = ids.size, int(roll.column("window_size")[0].as_py())
        meta["scope"].append(np.asarray(roll.column("batch").to_pylist()) + 1000 * i)
        meta["ids"].append(ids + 100_000 * i)
        rollout_m, branch_m = read_manifest(layout.rollouts(i)), read_manifest(layout.branches(i))
        update_evals = read_manifest(layout.updates(i)).model_evals
        base.append(
            {
                "trajectories": n,
                "window": w,
                "rollout_evals": rollout_m.model_evals,
                "update_evals": update_evals,
                "exact_branch_evals": branch_m.model_evals,
                "exact_branch_seconds": branch_m.timings.get("compute_s", 0.0),
                "rollout_seconds": rollout_m.timings.get("compute_s", 0.0),
            }
        )
        # exact: the run's own branches; shapes_pref scores beside the run
        for key in REWARDS:
            uri = layout.rewards(i, key)
            if not _finished(uri):
                uri = str(work / "exact" / f"iter={i:04d}" / "rewards" / key)
                seconds[f"score exact {key} it{i}"] = score_into(ctx, key, i, layout.branches(i), uri)
            got_ids, matrix = rho_matrix(uri)
            assert (got_ids == ids).all()
            rho.setdefault("exact", {}).setdefault(key, []).append(matrix)
        costs.setdefault("exact", []).append(
            {
                "branch_evals": branch_m.model_evals,
                "decodes": n * w,
                "branch_seconds": base[-1]["exact_branch_seconds"],
            }
        )
        for label in sampled:
            out = str(work / label.replace(":", "_") / f"iter={i:04d}")
            print(f"[step_rewards] {label} iteration {i}: branches", flush=True)
            stats = rebuild(ctx, label, i, f"{out}/branches")
            costs.setdefault(label, []).append(
                {
                    "branch_evals": int(stats["model_evals"]),
                    "model_calls": int(stats.get("model_calls", 0)),
                    "decodes": n * w if not label.startswith("prefix:") else n * int(label.split(":")[1]),
                    "branch_seconds": float(stats["seconds"]),
                }
            )
            for key in REWARDS:
                seconds[f"score {label} {key} it{i}"] = score_into(
                    ctx, key, i, f"{out}/branches", f"{out}/rewards/{key}"
                )
                got_ids, matrix = rho_matrix(f"{out}/rewards/{key}")
                assert (got_ids == ids).all()
                rho.setdefault(label, {}).setdefault(key, []).append(matrix)
        if not args.sample_prefix:
            from tpgrpo.algorithm.estimators import branch_evals, parse_estimator, prefix_rho

            for k in args.prefixes:
                label = f"prefix:{k}"
                est = parse_estimator(label)
                evals = n * sum(
                    branch_evals(est, j, j, cfg.sampling.num_steps, cfg.branch.reuse_rollout_velocity)
                    for j in range(w)
                )
                costs.setdefault(label, []).append({"branch_evals": evals, "decodes": n * k, "derived": True})
                for key in REWARDS:
                    rho.setdefault(label, {}).setdefault(key, []).append(prefix_rho(rho["exact"][key][-1], k))

    scope, ids = np.concatenate(meta["scope"]), np.concatenate(meta["ids"])
    iters = args.iterations
    mean = {k: float(np.mean([b[k] for b in base])) for k in base[0]}
    flow = {
        "model_evals": mean["rollout_evals"],
        "decodes": mean["trajectories"],
        "reward_calls": mean["trajectories"],
        "model_evals_with_update": mean["rollout_evals"] + mean["update_evals"],
    }
    results: dict[str, Any] = {}
    for label, by_reward in rho.items():
        c = costs[label]
        branch_evals_mean = float(np.mean([x["branch_evals"] for x in c]))
        decodes = mean["trajectories"] + float(np.mean([x["decodes"] for x in c]))
        calls = mean["trajectories"] * (mean["window"] + 1)  # the score stage scores every row
        needed = (
            mean["trajectories"] * (int(label.split(":")[1]) + 1) if label.startswith("prefix:") else calls
        )
        evals = mean["rollout_evals"] + branch_evals_mean
        entry: dict[str, Any] = {
            "cost": {
                "model_evals": evals,
                "branch_evals": branch_evals_mean,
                "decodes": decodes,
                "reward_calls": calls,
                "reward_calls_distinct_images": needed,
                "branch_seconds": float(np.mean([x["branch_seconds"] for x in c]))
                if "branch_seconds" in c[0]
                else None,
                "derived_from_exact": bool(c[0].get("derived", False)),
            },
            "cost_ratio_to_flow": evals / flow["model_evals"],
            "cost_ratio_to_flow_per_iteration": (evals + mean["update_evals"])
            / flow["model_evals_with_update"],
            "decode_ratio_to_flow": decodes / flow["decodes"],
            "reward_call_ratio_to_flow": calls / flow["reward_calls"],
            "sd35m_seconds_ratio_to_flow": (evals * SD35M_EVAL_S + decodes * SD35M_DECODE_S)
            / (flow["model_evals"] * SD35M_EVAL_S + flow["decodes"] * SD35M_DECODE_S),
            "rewards": {},
        }
        for key in REWARDS:
            est = np.concatenate(by_reward[key])
            ref = np.concatenate(rho["exact"][key])
            entry["rewards"][key] = compare(est, ref, scope, ids, cfg)
        # headline: the run's own reward (shapes) and mode
        head = entry["rewards"]["shapes"]
        entry["sign_agreement"] = head["sign_agreement"]
        entry["tp_precision"] = head["tp_constrained"]["tp_precision"]
        entry["tp_recall"] = head["tp_constrained"]["tp_recall"]
        results[label] = entry
    return {
        "run_id": args.run_id,
        "root": args.root,
        "config": Path(args.config).name,
        "iterations": iters,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "per_iteration": mean,
        "flow_grpo": flow,
        "seconds": seconds,
        "headline": "shapes reward, tp_constrained mode (the run's); per reward and mode under `rewards`",
        "estimators": results,
    }


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def report(res: dict[str, Any]) -> str:
    lines = [
        "| estimator | evals / it | × Flow (sampling) | × Flow (with update) | decodes × | reward calls × "
        "| reward | sign agr. | sign agr. (d≠0) | TP prec. | TP recall | kept prec./rec. | Spearman |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, e in res["estimators"].items():
        for key in REWARDS:
            r = e["rewards"][key]
            t = r["tp_constrained"]
            lines.append(
                f"| {label} | {e['cost']['model_evals']:.0f} | {e['cost_ratio_to_flow']:.2f} | "
                f"{e['cost_ratio_to_flow_per_iteration']:.2f} | {e['decode_ratio_to_flow']:.1f} | "
                f"{e['reward_call_ratio_to_flow']:.1f} | {key} | {r['sign_agreement']:.3f} | "
                f"{_f(r['sign_agreement_nonzero'], '.3f')} | {_f(t['tp_precision'])} | "
                f"{_f(t['tp_recall'])} | "
                f"{_f(t['kept_precision'])}/{_f(t['kept_recall'])} | {_f(t['spearman_step_reward'])} |"
            )
    lines += ["", "sign agreement of d_j by step j = 0 … W−1 (shapes / shapes_pref):", ""]
    for label, e in res["estimators"].items():
        parts = [" ".join(f"{v:.2f}" for v in e["rewards"][k]["sign_agreement_by_step"]) for k in REWARDS]
        lines.append(f"- {label}: {parts[0]}  /  {parts[1]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs"), help="runs root (default ./runs)")
    ap.add_argument("--run-id", default="sr-base", help="run to train or reuse")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument(
        "--estimators", nargs="*", default=list(SAMPLED), help="sampled estimators, e.g. coarse:2 x0"
    )
    ap.add_argument("--prefixes", nargs="*", type=int, default=list(PREFIXES), help="K of prefix:K")
    ap.add_argument("--sample-prefix", action="store_true", help="run the stage for prefix:K too")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(report(res))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
