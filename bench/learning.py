"""Learning efficiency on mini-GenEval: TP-GRPO modes against Flow-GRPO, per step and per compute.

From the shipped tiny checkpoint, every configuration trains with the same seeds for the same
compute budget, then its final EMA adapter is evaluated on one fixed held-out set — every test
prompt × `--replicates` with the same initial noise for every run (paired comparisons) — with the
`shapes` reward (accuracy and partial credit) and its image-quality figures (background deviation,
stray pixels, specks).

Runs go side by side in `--workers` processes of one torch thread each (on 2 cores, two such runs
do ~1.3× the work of one run on two threads). A run's budget is the CPU time of its process: on a
core of its own that is its wall-clock time, and other jobs on a shared machine do not change how
much a run gets to do. Each run stops within half an iteration of the budget.

Every configuration starts from `configs/tiny.yaml`, whose update recipe (lr 1e-3, 64 trajectories,
2 optimizer steps, no KL, EMA 0.9, SPEC §2's default window) was chosen by `bench/recipe.py`.

Configurations (`--configs`, default: the four modes and `flow_grpo_fast`):

| name | what |
|---|---|
| flow_grpo | terminal reward broadcast; no completions (Flow-GRPO's cost) |
| incremental, tp, tp_constrained | step-level rewards from ODE completions |
| flow_grpo_fast | flow_grpo on the first 3 steps only (the SDE window where composition is decided) |
| <mode>_kl | each mode with a small KL to the base (β = 0.01); only when named in `--configs` |
| dance | DanceGRPO (configs/dance_tiny.yaml): η = 0.3, 60 % of steps, shared noise; when named |
| tp_constrained_coarse, _x0 | tp_constrained, `branch.estimator` coarse (2 Euler steps) or x0; when named |

Runs are resumable: each is a tpgrpo run under `--root`, its per-iteration timings and
turning-point counts by step in `bench.json` beside it, its evaluation cached beside that; rerunning
skips finished iterations and evaluations. Every finished run (history and per-image evaluations)
is also archived in `bench/results/learning_runs/<protocol>/`, committed with the code, so the
benchmark resumes on another machine or a fresh clone, where `--root` is gone: archived runs are
not trained again, only the missing ones. Results (JSON; PNG curves against iterations, model
evaluations and compute seconds, and kept turning points by step) go to `bench/results/`.
`--quick`: 2 seeds × the four modes, 40 s each (~5 minutes; a smoke test of the pipeline only).

`--tasks counting` trains every run on the counting prompts only (`rollout.tasks`) and evaluates it
on counting's 18 held-out prompts; its archive and results carry the tasks in their names
(`learning_runs/budget450-r49-e10-counting/`, `learning_counting.json`). This is the protocol on
which Flow-GRPO beats the base within the budget (the pilot: bench/demo.py's `counting_ref`):

    python bench/learning.py --tasks counting --budget 450 --replicates 49 --seeds 5 --workers 2

`--reward shapes_pref` trains on the dense reward (issue 17) instead: every run is still evaluated
with `shapes` (accuracy, partial credit, quality), and with `shapes_pref` on the same images
("pref vs base"); archive and results carry `-shapes_pref`. Every table reports the paired
difference to the base and to Flow-GRPO in strict accuracy and in mean score.

`--flow-from BUDGET` takes the Flow-GRPO reference from the runs archived at another budget of the
same protocol, instead of training one at this budget: step-level modes given more compute can then
be read against Flow-GRPO's final score at its own budget (the paper's "TP-GRPO at N steps matches
Flow-GRPO at M"), e.g. after the 450-s protocol above:

    python bench/learning.py --tasks counting --reward shapes_pref --budget 900 --replicates 49 \
        --seeds 5 --configs tp_constrained tp --flow-from 450 --name learning_counting_shapes_pref_long
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from tpgrpo.errors import UserError

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
# Overrides every configuration shares. None since tiny.yaml carries the measured recipe (lr 1e-3
# and the rest, bench/recipe.py); the 2026-12-03 benchmark set lr 1e-3 here over tiny's old 3e-4.
COMMON: list[str] = []
# DanceGRPO on the same protocol: what configs/dance_tiny.yaml changes from tiny.yaml
# (tests/bench/test_learning.py checks the two agree)
DANCE = [
    *BASE_CONFIGS["flow_grpo"],
    "sampling.sampler=dance",
    "sampling.noise_level=0.3",
    "update.timestep_fraction=0.6",
    "rollout.same_noise_per_group=true",
]
CONFIGS: dict[str, list[str]] = {
    **BASE_CONFIGS,
    "flow_grpo_fast": [*BASE_CONFIGS["flow_grpo"], "sampling.window_size=3"],
    **{f"{mode}_kl": [*sets, "update.kl_beta=0.01"] for mode, sets in BASE_CONFIGS.items()},
    "dance": DANCE,
    # issue 18: the cheaper step-reward estimators (bench/step_rewards.py), at equal compute
    "tp_constrained_coarse": [*BASE_CONFIGS["tp_constrained"], "branch.estimator=coarse"],
    "tp_constrained_x0": [*BASE_CONFIGS["tp_constrained"], "branch.estimator=x0"],
}
DEFAULT_CONFIGS = [*MODES, "flow_grpo_fast"]  # the four modes and the early-window control


def run_dir(root: Path, name: str) -> Path:
    return root / name


def create_run(root: Path, config: str, seed: int, extra: list[str], sets: list[str] | None = None) -> Any:
    """Create the tpgrpo run of one configuration and seed (run.json, prompts, checkpoint 0), or find
    it: idempotent. `sets`: the configuration's overrides (default `COMMON + CONFIGS[config]`).
    Returns its `RunContext`."""
    from tpgrpo.config import load_config
    from tpgrpo.pipeline import steps

    chosen = [*COMMON, *CONFIGS[config]] if sets is None else sets
    sets = [*chosen, f"seed={seed}", f"storage.root={root}", "iterations=1000", *extra]
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    ctx = steps.RunContext.create(cfg, f"{config}-s{seed}", str(root))
    steps.init_run(ctx)
    return ctx


def train_run(
    root: Path,
    config: str,
    seed: int,
    budget_s: float,
    extra: list[str],
    log: Any,
    sets: list[str] | None = None,
) -> dict[str, Any]:
    """Train one configuration until its compute time is nearest to `budget_s` (resumable).

    Compute time is the CPU time of this process, which runs one torch thread (`--workers`): on an
    idle core it equals the wall-clock time, and other jobs on a shared machine do not shrink a
    run's budget. Wall-clock seconds are recorded beside it. An iteration starts only while the
    budget left exceeds half the last iteration's cost, so every run ends within half an iteration
    of the budget, whatever its cost per iteration.
    """
    from tpgrpo.pipeline import steps
    from tpgrpo.storage import read_manifest

    ctx = create_run(root, config, seed, extra, sets)
    cfg, run_id = ctx.cfg, ctx.layout.run_id
    progress_file = run_dir(root, run_id) / "bench.json"
    history: list[dict[str, Any]] = json.loads(progress_file.read_text()) if progress_file.is_file() else []
    spent = sum(h["seconds"] for h in history)
    i = len(history)
    while not history or budget_s - spent > history[-1]["seconds"] / 2:
        started, started_wall = time.process_time(), time.perf_counter()
        for stage in steps.STAGES:
            steps.run_stage(ctx, stage, i)
        seconds, wall = time.process_time() - started, time.perf_counter() - started_wall
        layout = ctx.layout
        evals = sum(
            read_manifest(uri).model_evals
            for uri in (layout.rollouts(i), layout.branches(i), layout.updates(i))
        )
        ann_uri = layout.annotations(i, ctx.reward_key(), cfg.reward.mode)
        ann = read_manifest(ann_uri).metrics
        history.append(
            {
                "iteration": i,
                "seconds": seconds,
                "wall_seconds": wall,
                "model_evals": evals,
                "train_reward": ann["reward_final_mean"],
                "turning_points": ann["turning_points"],
                "kept": ann["kept"],
                **step_statistics(ann_uri),
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


def step_statistics(annotations_uri: str) -> dict[str, list[int]]:
    """Per trained step index: transitions, turning points detected and kept, zero increments `d_j`,
    and transitions with a non-zero advantage (the ones that carry a gradient)."""
    from tpgrpo.storage import read_table

    t = read_table(
        annotations_uri, "annotations", columns=["step", "turning_point", "kept", "increment", "advantage"]
    )
    step = t.column("step").to_numpy()
    n = int(step.max()) + 1
    inc = t.column("increment").to_numpy(zero_copy_only=False)  # NaN without completions

    def per_step(mask: np.ndarray) -> list[int]:
        return np.bincount(step[mask], minlength=n).tolist()

    return {
        "steps": per_step(np.ones_like(step, dtype=bool)),
        "tp_by_step": per_step(t.column("turning_point").to_numpy(zero_copy_only=False)),
        "kept_by_step": per_step(t.column("kept").to_numpy(zero_copy_only=False)),
        "zero_increment_by_step": per_step(inc == 0.0),
        "nonzero_advantage_by_step": per_step(t.column("advantage").to_numpy() != 0.0),
    }


STEP_KEYS = ("steps", "tp_by_step", "kept_by_step", "zero_increment_by_step", "nonzero_advantage_by_step")


def config_mode(config: str) -> str:
    """The reward mode a configuration trains with."""
    return next(x.split("=", 1)[1] for x in CONFIGS[config] if x.startswith("reward.mode="))


def eval_cache(
    root: Path, run_id: str, checkpoint: int, replicates: int, steps: int, ema: bool = True
) -> Path:
    live = "" if ema else "-live"
    return run_dir(root, run_id) / f"eval-{checkpoint}-{replicates}-{steps}{live}.json"


ARCHIVE = RESULTS / "learning_runs"


def archive_dir(
    budget: float, replicates: int, steps: int, tasks: list[str] | None = None, reward: str = "shapes"
) -> Path:
    """The archive of one protocol: runs are comparable only at the same budget, tasks, training
    reward and held-out set (`tasks`: the `rollout.tasks` every run trains and is evaluated on;
    None: all of them)."""
    tail = "" if reward == "shapes" else f"-{reward}"
    return ARCHIVE / f"budget{budget:g}-r{replicates}-e{steps}{task_suffix(tasks)}{tail}"


class WithTrainingReward:
    """The `shapes` detector (accuracy, partial credit, image quality: every run's evaluation),
    with the run's own training reward's score of the same image in each row's details (`pref`):
    runs trained on `shapes_pref` are evaluated on both, from one sampling."""

    def __init__(self, shapes: Any, trained: Any) -> None:
        self.shapes, self.trained = shapes, trained
        self.key, self.version = shapes.key, shapes.version

    def score(self, images: Any, prompts: Any) -> Any:
        result = self.shapes.score(images, prompts)
        pref = self.trained.score(images, prompts).score
        result.details = [d | {"pref": float(p)} for d, p in zip(result.details, pref, strict=True)]
        return result


def task_suffix(tasks: list[str] | None) -> str:
    """`-counting-position` for `--tasks counting position`; empty for every task."""
    return "".join(f"-{t}" for t in tasks or [])


def task_sets(tasks: list[str] | None) -> list[str]:
    """The config override restricting training (and so the held-out evaluation) to `tasks`."""
    return [f"rollout.tasks=[{', '.join(tasks)}]"] if tasks else []


def _rounded(x: Any) -> Any:
    """`x` with every float rounded to 5 decimals (the archive is committed: keep it small)."""
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def archive(folder: Path, name: str, doc: dict[str, Any]) -> None:
    """Write `<folder>/<name>.json` atomically (a crash leaves the old file or none)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(_rounded(doc), separators=(",", ":")))
    tmp.replace(folder / f"{name}.json")


def archived(folder: Path, name: str) -> dict[str, Any] | None:
    """An archived run or base evaluation, or None."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def finished_run(
    root: Path, config: str, seed: int, replicates: int, steps: int, folder: Path | None = None
) -> dict[str, Any] | None:
    """A run whose training and final evaluation are stored, as `train_and_evaluate` returns it:
    from the archive `folder` if it is there, else from `--root`."""
    run_id = f"{config}-s{seed}"
    if folder is not None and (found := archived(folder, run_id)) is not None:
        return found
    progress = run_dir(root, run_id) / "bench.json"
    if not progress.is_file():
        return None
    history = json.loads(progress.read_text())
    cache = eval_cache(root, run_id, len(history), replicates, steps)
    if not cache.is_file():
        return None  # still training or evaluating
    if any(k not in h for h in history for k in STEP_KEYS):  # written by an earlier version: recount
        from tpgrpo.storage import RunLayout

        layout = RunLayout(str(root), run_id)
        for h in history:
            h.update(step_statistics(layout.annotations(h["iteration"], "shapes", config_mode(config))))
        progress.write_text(json.dumps(history, indent=1))
    run = {"run_id": run_id, "config": config, "seed": seed, "history": history, "iterations": len(history)}
    return run | {"eval": json.loads(cache.read_text())}


def evaluate_run(
    root: Path, run_id: str, checkpoint: int, replicates: int, steps: int, ema: bool = True
) -> dict[str, Any]:
    """Score the EMA adapter of `checkpoint` (`ema=False`: the live adapter) on the fixed held-out set
    (cached beside the run): the test prompts of the tasks the run trains on, as `tpgrpo evaluate`
    takes them."""
    cache = eval_cache(root, run_id, checkpoint, replicates, steps, ema)
    if cache.is_file():
        return json.loads(cache.read_text())
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.pipeline.evaluate import eval_prompts
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.checkpoints import load_adapter
    from tpgrpo.stages.evaluate import evaluate

    ctx = load_run(run_id, str(root))
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(checkpoint), policy, ema=ema)
    _, prompts = eval_prompts(ctx, None, None)
    trained = ctx.reward_key() != "shapes"
    result = evaluate(
        policy,
        WithTrainingReward(make_reward("shapes"), ctx.reward()) if trained else make_reward("shapes"),
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
        **({"pref": [d["pref"] for d in details]} if trained else {}),
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


def _one_thread() -> None:
    """Worker initializer: one torch thread per run, so runs side by side share the cores evenly."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    torch.set_num_threads(1)


def _log(message: str) -> None:
    print(message, flush=True)


def train_and_evaluate(
    root: Path, config: str, seed: int, budget: float, extra: list[str], replicates: int, steps: int
) -> dict[str, Any]:
    """One run: train within the budget, then evaluate its final EMA adapter (in a worker)."""
    r = train_run(root, config, seed, budget, extra, _log)
    r["eval"] = evaluate_run(root, r["run_id"], r["iterations"], replicates, steps)
    _log(f"{r['run_id']}: {r['iterations']} iterations, eval strict {np.mean(r['eval']['strict']):.3f}")
    return r


def submit_jobs(
    pool: Executor,
    root: Path,
    jobs: list[tuple[str, int]],
    budget: float,
    extra: list[str],
    replicates: int,
    steps: int,
    base: bool = True,
    train: bool = True,
) -> tuple[Future[dict[str, Any]] | None, list[Future[dict[str, Any]]]]:
    """Submit the base evaluation (unless `base` is false: it is archived) and every run's training
    and evaluation (unless `train` is false) to `pool`.

    The base evaluation reads checkpoint 0 of the first job's run, so that run is created first (in
    the pool, waited for): on a fresh `--root` the evaluation would otherwise start before any run
    exists and fail with "unknown run" (found only at the end, when its result is read).

    Returns:
        the base evaluation's future and one future per job, in `jobs` order.
    """
    base_future = None
    if base:
        pool.submit(create_run, root, *jobs[0], extra).result()
        base_future = pool.submit(evaluate_run, root, f"{jobs[0][0]}-s{jobs[0][1]}", 0, replicates, steps)
    if not train:
        return base_future, []
    runs = [pool.submit(train_and_evaluate, root, c, s, budget, extra, replicates, steps) for c, s in jobs]
    return base_future, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=600.0, help="compute seconds per run (one thread)")
    ap.add_argument(
        "--replicates", type=int, default=6, help="seeds per test prompt (146 prompts; 18 for counting)"
    )
    ap.add_argument(
        "--reward",
        default="shapes",
        choices=["shapes", "shapes_pref"],
        help="the training reward (reward.spec); every run is also evaluated with shapes (accuracy, "
        "quality), and with shapes_pref ('pref vs base') when it trains on it",
    )
    ap.add_argument(
        "--tasks",
        nargs="*",
        default=None,
        help="train and evaluate on these tasks only (rollout.tasks), e.g. counting; default: every task",
    )
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs side by side")
    ap.add_argument("--root", default=str(ROOT / "runs" / "bench-learning"))
    ap.add_argument(
        "--name",
        default=None,
        help="results file names (bench/results/NAME.json, .md, _curves.png); default: learning, "
        "learning_<tasks> with --tasks, learning_quick with --quick. Runs are archived by protocol "
        "either way, so another --name over other --configs reuses the finished ones",
    )
    ap.add_argument(
        "--flow-from",
        type=float,
        default=None,
        metavar="BUDGET",
        help="take the flow_grpo reference from the runs archived at this budget (same protocol "
        "otherwise) instead of training it at --budget",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="summarize the runs finished so far (train nothing; evaluates the base if needed)",
    )
    args = ap.parse_args()
    configs = args.configs or (list(MODES) if args.quick else DEFAULT_CONFIGS)
    if args.flow_from is not None:  # the reference comes from the other budget's archive
        configs = [c for c in configs if c != "flow_grpo"]
    seeds = list(range(2 if args.quick else args.seeds))
    budget = 40.0 if args.quick else args.budget
    replicates = 1 if args.quick else args.replicates
    extra = [*(["rollout.batches_per_iteration=1"] if args.quick else []), *task_sets(args.tasks)]
    if args.reward != "shapes":
        extra.append(f"reward.spec={args.reward}")
    root = Path(args.root)
    # The four modes first, seed by seed, then the controls: a partial run is a balanced one.
    modes, controls = [c for c in configs if c in MODES], [c for c in configs if c not in MODES]
    jobs = [(c, s) for group in (modes, controls) for s in seeds for c in group]
    folder = archive_dir(budget, replicates, args.eval_steps, args.tasks, args.reward)
    suffix = task_suffix(args.tasks) + ("" if args.reward == "shapes" else f"-{args.reward}")
    name = args.name or ("learning_quick" if args.quick else "learning") + suffix.replace("-", "_")
    found = {(c, s): finished_run(root, c, s, replicates, args.eval_steps, folder) for c, s in jobs}
    base = archived(folder, "base")
    if args.report_only:
        runs = [r for r in found.values() if r is not None]
        missing = [f"{c}-s{s}" for (c, s), r in found.items() if r is None]
        print(f"{len(runs)} of {len(jobs)} runs finished; missing: {', '.join(missing) or 'none'}")
        if not runs:
            raise SystemExit(f"no finished run under {root} or in {folder}")
        if base is None:
            create_run(root, *jobs[0], extra)  # checkpoint 0 of the base run, if it never started
            base = evaluate_run(root, f"{jobs[0][0]}-s{jobs[0][1]}", 0, replicates, args.eval_steps)
            archive(folder, "base", base)
    else:
        missing = []
        todo = [job for job, r in found.items() if r is None]
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs archived in {folder}; {len(todo)} to run")
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=_one_thread, max_tasks_per_child=1
        ) as pool:
            base_future, futures = submit_jobs(
                pool, root, todo or jobs[:1], budget, extra, replicates, args.eval_steps,
                base=base is None, train=bool(todo),
            )  # fmt: skip
            # Archive each result as it comes (an interrupted benchmark keeps every finished run),
            # and evaluate a Flow-GRPO reference at its partner's iterations as soon as both are
            # finished, while the reference's checkpoints are still on this machine.
            pending: dict[Future[dict[str, Any]], tuple[str, dict[str, Any] | None]] = {
                f: ("run", None) for f in futures
            }
            if base_future is not None:
                pending[base_future] = ("base", None)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    kind, reference = pending.pop(f)
                    r = f.result()
                    if kind == "base":
                        base = r
                        archive(folder, "base", r)
                    elif kind == "matched" and reference is not None:
                        reference["matched_iterations"], reference["eval_matched"] = r["checkpoint"], r
                        archive(folder, reference["run_id"], reference)
                    else:
                        archive(folder, r["run_id"], r)
                        found[(r["config"], r["seed"])] = r
                        for ref, partner in ready_pairs(found, r):
                            g = pool.submit(
                                evaluate_run, root, ref["run_id"], partner["iterations"], replicates,
                                args.eval_steps,
                            )  # fmt: skip
                            pending[g] = ("matched", ref)
        runs = [r for r in found.values() if r is not None]
    assert base is not None
    evaluate_at_partner_iterations(root, runs, replicates, args.eval_steps, folder)
    if args.flow_from is not None:
        flow_folder = archive_dir(args.flow_from, replicates, args.eval_steps, args.tasks, args.reward)
        runs += reference_runs(flow_folder, seeds, base)
    summary = summarize(runs, base)
    RESULTS.mkdir(parents=True, exist_ok=True)
    note = (
        None
        if args.flow_from is None
        else f"flow_grpo: its runs archived at {args.flow_from:g} s (--flow-from)"
    )
    report(summary, runs, name, note)
    out = {
        "quick": args.quick,
        "budget_s": budget,
        "flow_grpo_budget_s": budget if args.flow_from is None else args.flow_from,
        "tasks": args.tasks,
        "reward": args.reward,
        "seeds": seeds,
        "missing_runs": missing,
        "workers": args.workers,
        "eval_images": len(base["strict"]),
        "eval_steps": args.eval_steps,
        "summary": summary,
        "runs": [
            {k: v for k, v in r.items() if k not in ("eval", "eval_matched")}
            | {"eval": r["eval"]["summary"]}
            | ({"eval_matched": r["eval_matched"]["summary"]} if "eval_matched" in r else {})
            for r in runs
        ],
        "load_average": os.getloadavg(),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))


def reference_runs(folder: Path, seeds: list[int], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The archived `flow_grpo` runs of `seeds` in `folder` (another budget of the same protocol),
    to stand as the Flow-GRPO reference (`--flow-from`). Their evaluation at a partner's iteration
    count belongs to that budget's partner and is dropped.

    Raises:
        UserError: a seed's run is not archived there, or the folder's base evaluation is not the
            same held-out images as `base` (another protocol: the paired differences would be void).
    """
    theirs = archived(folder, "base")
    if (
        theirs is None
        or theirs["task"] != base["task"]
        or not np.allclose(theirs["score"], base["score"], atol=1e-4)  # the archive rounds to 5 decimals
    ):
        raise UserError(
            f"{folder} does not hold a base evaluation of the same held-out images as this benchmark; "
            "fix: give --flow-from a budget that was run with the same --tasks, --reward, "
            "--replicates and --eval-steps"
        )
    runs = []
    for seed in seeds:
        run = archived(folder, f"flow_grpo-s{seed}")
        if run is None:
            raise UserError(
                f"{folder} has no archived flow_grpo-s{seed}; fix: run the benchmark at that budget "
                "with --configs flow_grpo first, or ask for fewer --seeds"
            )
        runs.append({k: v for k, v in run.items() if k not in ("eval_matched", "matched_iterations")})
    return runs


def flow_reference(config: str) -> str:
    """The Flow-GRPO run a configuration is compared with: `flow_grpo_kl` for the KL controls."""
    return "flow_grpo_kl" if config.endswith("_kl") else "flow_grpo"


def exact_reference(config: str) -> str | None:
    """The configuration an estimator configuration (one that sets `branch.estimator`) is compared
    with: the same overrides with the exact completions (`tp_constrained_x0` → `tp_constrained`).
    None for the others."""
    sets = CONFIGS.get(config, [])
    exact = [s for s in sets if not s.startswith("branch.estimator=")]
    if exact == sets:
        return None
    return next((c for c, v in CONFIGS.items() if v == exact), None)


# Per step: each Flow-GRPO reference is also evaluated at the iteration count its step-level
# partner (same seed) reached within the same budget.
PARTNERS = {"flow_grpo": "tp_constrained", "flow_grpo_kl": "tp_constrained_kl"}


def ready_pairs(
    found: dict[tuple[str, int], dict[str, Any] | None], r: dict[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (Flow-GRPO reference, partner) pairs that `r` completes and that still lack the
    reference's evaluation at the partner's iterations."""
    seed, pairs = r["seed"], []
    for ref_config, partner_config in PARTNERS.items():
        ref, partner = found.get((ref_config, seed)), found.get((partner_config, seed))
        if (
            r["config"] in (ref_config, partner_config)
            and ref is not None
            and partner is not None
            and ref.get("matched_iterations") != partner["iterations"]
        ):
            pairs.append((ref, partner))
    return pairs


def evaluate_at_partner_iterations(
    root: Path, runs: list[dict[str, Any]], replicates: int, steps: int, folder: Path | None = None
) -> None:
    """Add `eval_matched` (and `matched_iterations`) to the Flow-GRPO reference runs in place, and
    to their archive in `folder`. A reference whose checkpoints are gone (trained on another
    machine) and whose archive lacks the evaluation is left without it, with a message."""
    by_key = {(r["config"], r["seed"]): r for r in runs}
    for r in runs:
        partner = by_key.get((PARTNERS.get(r["config"], ""), r["seed"]))
        if partner is None or r.get("matched_iterations") == partner["iterations"]:
            continue
        r.pop("eval_matched", None)
        r.pop("matched_iterations", None)
        try:
            evaluation = evaluate_run(root, r["run_id"], partner["iterations"], replicates, steps)
        except (UserError, FileNotFoundError) as e:
            print(f"{r['run_id']}: no evaluation at {partner['iterations']} iterations ({e})")
            continue
        r["matched_iterations"], r["eval_matched"] = partner["iterations"], evaluation
        if folder is not None:
            archive(folder, r["run_id"], r)


def summarize(runs: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """Per configuration: accuracy (mean ± 95 % CI over seeds), paired differences (same images,
    same initial noise) to the base and to its Flow-GRPO reference — at the end of the budget and at
    equal iterations — quality figures, cost, turning-point statistics."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_config.setdefault(r["config"], []).append(r)
    base_strict = np.asarray(base["strict"], float)
    final = {(r["config"], r["seed"]): np.asarray(r["eval"]["strict"], float) for r in runs}
    matched = {
        (r["config"], r["seed"]): np.asarray(r["eval_matched"]["strict"], float)
        for r in runs
        if "eval_matched" in r
    }
    final_score = {(r["config"], r["seed"]): np.asarray(r["eval"]["score"], float) for r in runs}
    has_pref = "pref" in base and all("pref" in r["eval"] for r in runs)
    final_pref = (
        {(r["config"], r["seed"]): np.asarray(r["eval"]["pref"], float) for r in runs} if has_pref else {}
    )

    def paired(
        config: str,
        rs: list[dict[str, Any]],
        against: dict[Any, np.ndarray],
        ours: dict[Any, np.ndarray] = final,
        ref: str | None = None,
    ) -> tuple[float, float] | None:
        """Mean ± CI over seeds of the per-image difference (strict; `ours`/`against`: another
        figure) to the reference's run of that seed (default: the Flow-GRPO reference)."""
        ref = ref or flow_reference(config)
        if config == ref or not all((ref, r["seed"]) in against for r in rs):
            return None
        diffs = [float((ours[(config, r["seed"])] - against[(ref, r["seed"])]).mean()) for r in rs]
        return mean_ci(diffs)

    def vs_base(rs: list[dict[str, Any]], figure: str) -> tuple[float, float]:
        """Mean ± CI over seeds of the per-image difference of `figure` (score, pref) to the base."""
        b = np.asarray(base[figure], float)
        return mean_ci([float((np.asarray(r["eval"][figure], float) - b).mean()) for r in rs])

    matched_at = {(r["config"], r["seed"]): r["matched_iterations"] for r in runs if "eval_matched" in r}

    def near_matched(config: str, rs: list[dict[str, Any]]) -> bool:
        """Whether each seed's run is within one iteration of the count its Flow-GRPO reference was
        evaluated at (its step-level partner's): `incremental` and `tp` are, `dance` and the early
        window (more iterations than the reference has) or the estimators are not."""
        ref = flow_reference(config)
        return all(
            (ref, r["seed"]) in matched_at and abs(r["iterations"] - matched_at[(ref, r["seed"])]) <= 1
            for r in rs
        )

    curves = {c: mean_curve(rs) for c, rs in by_config.items()}
    target = float(curves["flow_grpo"]["smoothed"][-1]) if "flow_grpo" in curves else None
    tasks = sorted(set(base["task"]))
    out: dict[str, Any] = {
        "base": {
            "strict": float(base_strict.mean()),
            "score": float(np.mean(base["score"])),
            **({"pref": float(np.mean(base["pref"]))} if has_pref else {}),
            "quality": {k: float(np.mean(v)) for k, v in base["quality"].items()},
            "per_task_strict": per_task(base["strict"], base["task"], tasks),
        },
        "flow_grpo_final_train_reward": target,
    }
    for config, rs in by_config.items():
        strict = [np.asarray(r["eval"]["strict"], float) for r in rs]
        history = [h for r in rs for h in r["history"]]
        out[config] = {
            "runs": len(rs),
            "strict": mean_ci([float(s.mean()) for s in strict]),
            "score": mean_ci([float(np.mean(r["eval"]["score"])) for r in rs]),
            "paired_diff_vs_base": mean_ci([float((s - base_strict).mean()) for s in strict]),
            "paired_score_diff_vs_base": vs_base(rs, "score"),
            "paired_score_diff_vs_flow_grpo": paired(config, rs, final_score, final_score),
            **(
                {
                    "paired_pref_diff_vs_base": vs_base(rs, "pref"),
                    "paired_pref_diff_vs_flow_grpo": paired(config, rs, final_pref, final_pref),
                }
                if has_pref
                else {}
            ),
            "flow_reference": flow_reference(config),
            # issue 18: an estimator configuration against its exact-completion configuration
            "exact_reference": (exact := exact_reference(config)),
            "paired_diff_vs_exact": paired(config, rs, final, ref=exact) if exact else None,
            "paired_score_diff_vs_exact": (
                paired(config, rs, final_score, final_score, ref=exact) if exact else None
            ),
            "paired_diff_vs_flow_grpo": paired(config, rs, final),
            "paired_diff_vs_flow_grpo_equal_iterations": (
                paired(config, rs, matched) if near_matched(config, rs) else None
            ),
            "strict_at_partner_iterations": (
                mean_ci([float(np.mean(r["eval_matched"]["strict"])) for r in rs])
                if all("eval_matched" in r for r in rs)
                else None
            ),
            "partner_iterations": (
                float(np.mean([r["matched_iterations"] for r in rs]))
                if all("eval_matched" in r for r in rs)
                else None
            ),
            "iterations": float(np.mean([r["iterations"] for r in rs])),
            "compute_seconds": float(np.mean([sum(h["seconds"] for h in r["history"]) for r in rs])),
            "model_evals_per_iteration": float(np.mean([h["model_evals"] for h in history])),
            "seconds_per_iteration": float(np.mean([h["seconds"] for h in history])),
            "quality": {k: mean_ci([float(np.mean(r["eval"]["quality"][k])) for r in rs]) for k in QUALITY},
            "reaches_flow_grpo_final": first_reach(curves[config], target),
            # the other way round (the paper's "TP-GRPO at N steps matches Flow-GRPO at M"): where
            # Flow-GRPO's curve first reaches this configuration's final smoothed train reward
            "flow_grpo_reaches_this_final": (
                first_reach(curves["flow_grpo"], float(curves[config]["smoothed"][-1]))
                if "flow_grpo" in curves and config != "flow_grpo"
                else None
            ),
            "per_task_strict": {
                t: mean_ci([per_task(r["eval"]["strict"], r["eval"]["task"], [t])[t] for r in rs])
                for t in tasks
            },
            "turning_points": turning_point_statistics(history),
            "signal": signal_statistics(history),
        }
    return out


QUALITY = ("background_dev", "stray_frac", "specks")


def per_task(strict: list[bool], task: list[str], tasks: list[str]) -> dict[str, float]:
    """Strict accuracy per task."""
    s, t = np.asarray(strict, float), np.asarray(task)
    return {k: float(s[t == k].mean()) for k in tasks}


def turning_point_statistics(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per trained step index, over every iteration of every seed: the share of transitions that are
    detected turning points, kept after balancing, and that have a zero increment `d_j`. None for
    runs without completions (no increments)."""
    if not any(sum(h["zero_increment_by_step"]) for h in history):
        return None
    steps = np.sum([h["steps"] for h in history], axis=0)  # [W]
    counts = {
        k: np.sum([h[k] for h in history], axis=0)
        for k in ("tp_by_step", "kept_by_step", "zero_increment_by_step")
    }
    return {
        "per_iteration": float(np.mean([h["turning_points"] for h in history])),
        "kept_per_iteration": float(np.mean([h["kept"] for h in history])),
        "removed_by_balancing": (
            float(1 - counts["kept_by_step"].sum() / counts["tp_by_step"].sum())
            if counts["tp_by_step"].sum()
            else None
        ),
        "share_of_steps": float(counts["kept_by_step"].sum() / steps.sum()),
        "tp_rate_by_step": (counts["tp_by_step"] / steps).tolist(),
        "kept_rate_by_step": (counts["kept_by_step"] / steps).tolist(),
        "zero_increment_rate_by_step": (counts["zero_increment_by_step"] / steps).tolist(),
    }


def signal_statistics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of trained transitions with a non-zero advantage (the ones a gradient comes from),
    overall and per step index."""
    steps = np.sum([h["steps"] for h in history], axis=0)  # [W]
    nonzero = np.sum([h["nonzero_advantage_by_step"] for h in history], axis=0)  # [W]
    return {
        "nonzero_advantage_share": float(nonzero.sum() / steps.sum()),
        "by_step": (nonzero / steps).tolist(),
    }


SMOOTH = 3  # iterations of the trailing mean that "reaches Flow-GRPO's final score" is read on


def trailing_mean(x: np.ndarray) -> np.ndarray:
    """Mean of each value and the `SMOOTH − 1` before it (fewer at the start)."""
    return np.array([x[max(0, i + 1 - SMOOTH) : i + 1].mean() for i in range(len(x))])


def mean_curve(rs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Train reward (mean final score of the iteration's rollouts), cumulative model evaluations
    and compute seconds per iteration, averaged over seeds; `smoothed`: trailing mean of the reward."""
    n = min(len(r["history"]) for r in rs)
    hist = [r["history"][:n] for r in rs]
    reward = np.mean([[h["train_reward"] for h in h_] for h_ in hist], axis=0)  # [n]
    return {
        "reward": reward,
        "smoothed": trailing_mean(reward),
        "evals": np.cumsum(np.mean([[h["model_evals"] for h in h_] for h_ in hist], axis=0)),
        "seconds": np.cumsum(np.mean([[h["seconds"] for h in h_] for h_ in hist], axis=0)),
    }


def first_reach(curve: dict[str, np.ndarray], target: float | None) -> dict[str, float] | None:
    """Iteration (1-based), evaluations and seconds at which the smoothed curve first reaches `target`."""
    if target is None:
        return None
    hit = np.nonzero(curve["smoothed"] >= target)[0]
    if hit.size == 0:
        return None
    i = int(hit[0])
    return {
        "iteration": i + 1,
        "model_evals": float(curve["evals"][i]),
        "seconds": float(curve["seconds"][i]),
    }


def fmt_reach(reach: dict[str, float] | None) -> str:
    """`iteration / seconds` of a `first_reach`, or `-` where the curve never gets there."""
    return "-" if reach is None else f"{reach['iteration']} / {reach['seconds']:.0f}"


def fmt_ci(v: tuple[float, float] | list[float] | None) -> str:
    """`mean±half-width`, or `-` where there is nothing to compare."""
    return "-" if v is None else f"{v[0]:.3f}±{v[1]:.3f}"


def tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The result tables as (title, header, rows) of text cells, for the console and for markdown."""
    b = summary["base"]
    configs = [c for c in summary if c not in ("base", "flow_grpo_final_train_reward")]
    q0 = b["quality"]
    base_quality = [f"{q0['background_dev']:.4f}", f"{q0['stray_frac']:.4f}", f"{q0['specks']:.3f}"]
    pref = "pref" in b
    no_diff = ["-"] * 3
    base_row = ["base", "0", f"{b['strict']:.3f}", *no_diff, f"{b['score']:.4f}", *["-"] * (2 + 2 * pref)]
    main_rows = [[*base_row, *no_diff, "-", *base_quality]]  # evals/it, s/it and both "reaches"
    for c in configs:
        v, q = summary[c], summary[c]["quality"]
        main_rows.append(
            [
                c,
                f"{v['iterations']:.1f}",
                fmt_ci(v["strict"]),
                fmt_ci(v["paired_diff_vs_base"]),
                fmt_ci(v["paired_diff_vs_flow_grpo"]),
                fmt_ci(v["paired_diff_vs_flow_grpo_equal_iterations"]),
                fmt_ci(v["score"]),
                fmt_ci(v.get("paired_score_diff_vs_base")),
                fmt_ci(v.get("paired_score_diff_vs_flow_grpo")),
                *(
                    [
                        fmt_ci(v.get("paired_pref_diff_vs_base")),
                        fmt_ci(v.get("paired_pref_diff_vs_flow_grpo")),
                    ]
                    if pref
                    else []
                ),
                f"{v['model_evals_per_iteration']:.0f}",
                f"{v['seconds_per_iteration']:.1f}",
                fmt_reach(v["reaches_flow_grpo_final"]),
                fmt_reach(v["flow_grpo_reaches_this_final"]),
                f"{q['background_dev'][0]:.4f}",
                f"{q['stray_frac'][0]:.4f}",
                f"{q['specks'][0]:.3f}",
            ]
        )
    # vs flow: paired difference to the Flow-GRPO reference (flow_grpo_kl for the KL controls) at the
    # end of the budget; = iters: the same, with the reference evaluated at this run's iteration count
    # (at its step-level partner's: shown where that is within one iteration of this run's)
    main_header = [
        "config",
        "iterations",
        "strict",
        "vs base",
        "vs flow",
        "vs flow, = iters",
        "score",
        "score vs base",
        "score vs flow",
        *(["pref vs base", "pref vs flow"] if pref else []),
        "evals/it",
        "s/it",
        "reaches flow (it / s)",
        "flow reaches it (it / s)",
        "bg dev",
        "stray",
        "specks",
    ]
    tasks = list(b["per_task_strict"])
    task_rows = [["base", *(f"{b['per_task_strict'][t]:.3f}" for t in tasks)]]
    task_rows += [[c, *(f"{summary[c]['per_task_strict'][t][0]:.3f}" for t in tasks)] for c in configs]
    tp_rows = []
    for c in configs:
        tp = summary[c]["turning_points"]
        if tp is None:
            tp_rows.append([c, "no completions", "-", "-", "-", "-", "-"])
            continue
        removed = "-" if tp["removed_by_balancing"] is None else f"{tp['removed_by_balancing']:.2f}"
        tp_rows.append(
            [
                c,
                f"{tp['per_iteration']:.1f}",
                f"{tp['kept_per_iteration']:.1f}",
                removed,
                f"{tp['share_of_steps']:.3f}",
                " ".join(f"{x:.2f}" for x in tp["kept_rate_by_step"]),
                " ".join(f"{x:.2f}" for x in tp["zero_increment_rate_by_step"]),
            ]
        )
    signal_rows = [
        [
            c,
            f"{summary[c]['signal']['nonzero_advantage_share']:.3f}",
            " ".join(f"{x:.2f}" for x in summary[c]["signal"]["by_step"]),
        ]
        for c in configs
    ]
    exact_rows = [
        [
            c,
            summary[c]["exact_reference"],
            f"{summary[c]['iterations']:.1f}",
            f"{summary[c]['model_evals_per_iteration']:.0f}",
            fmt_ci(summary[c]["paired_diff_vs_exact"]),
            fmt_ci(summary[c]["paired_score_diff_vs_exact"]),
            fmt_ci(summary[c].get("paired_score_diff_vs_flow_grpo")),
        ]
        for c in configs
        if summary[c].get("exact_reference")
    ]
    exact_table = (
        "cheaper step-reward estimators against exact completions (paired, end of the budget)",
        ["config", "exact", "iterations", "evals/it", "strict vs exact", "score vs exact", "score vs flow"],
        exact_rows,
    )
    return [
        ("held-out accuracy, cost and image quality", main_header, main_rows),
        *([exact_table] if exact_rows else []),
        ("per-task strict accuracy", ["config", *tasks], task_rows),
        (
            "turning points (kept rate and zero increments by trained step j = 0 … W−1)",
            [
                "config",
                "detected / it",
                "kept / it",
                "removed by balancing",
                "kept share",
                "kept rate",
                "zero d_j",
            ],
            tp_rows,
        ),
        ("transitions with a non-zero advantage", ["config", "share", "by step"], signal_rows),
    ]


def report(summary: dict[str, Any], runs: list[dict[str, Any]], name: str, note: str | None = None) -> None:
    """Print the tables and write them as markdown (`<name>.md`), after `note` if given; draw
    train-reward curves against iterations, evaluations and seconds, and kept turning points by step
    index (`<name>_curves.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markdown = [] if note is None else [note, ""]
    if note is not None:
        print(note)
    for title, header, rows in tables(summary):
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(f"\n{title}")
        for r in [header, *rows]:
            print("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)))
        markdown += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        markdown += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    (RESULTS / f"{name}.md").write_text("\n".join(markdown))
    configs = [c for c in summary if c not in ("base", "flow_grpo_final_train_reward")]

    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
    for config in configs:
        curve = mean_curve([r for r in runs if r["config"] == config])
        xs = (np.arange(1, len(curve["smoothed"]) + 1), curve["evals"], curve["seconds"])
        for ax, x in zip(axes[:3], xs, strict=True):
            ax.plot(x, curve["smoothed"], label=config)
        gap = paired_train_gap(runs, config)
        if gap is not None:
            axes[3].plot(np.arange(1, len(gap) + 1), gap, label=f"{config} − {flow_reference(config)}")
        tp = summary[config]["turning_points"]
        if tp and tp["per_iteration"] > 0:
            rates = tp["kept_rate_by_step"]
            axes[4].plot(np.arange(len(rates)), rates, marker="o", label=config)
    labels = ("iteration", "model evaluations", "compute seconds", "iteration", "trained step j")
    ylabels = (
        *[f"train reward (trailing mean of {SMOOTH})"] * 3,
        "train reward difference, same prompts and noise",
    )
    for ax, label, ylabel in zip(axes[:4], labels, ylabels, strict=False):
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
    axes[3].axhline(0.0, color="black", lw=0.8)
    axes[4].set_xlabel("trained step j")
    axes[4].set_ylabel("kept turning points per transition")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel with no curve (no step-level run) has no legend
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}_curves.png", dpi=110)


def paired_train_gap(runs: list[dict[str, Any]], config: str) -> np.ndarray | None:
    """Train reward minus its Flow-GRPO reference's at the same iteration (a run's prompts and initial
    noise at an iteration depend only on its seed), averaged over seeds, trailing mean of `SMOOTH`."""
    ref = flow_reference(config)
    by_key = {(r["config"], r["seed"]): r for r in runs}
    pairs = [
        (r, by_key[(ref, r["seed"])]) for r in runs if r["config"] == config and (ref, r["seed"]) in by_key
    ]
    if config == ref or not pairs:
        return None
    n = min(min(len(a["history"]), len(b["history"])) for a, b in pairs)
    gap = np.mean(
        [
            [a["history"][i]["train_reward"] - b["history"][i]["train_reward"] for i in range(n)]
            for a, b in pairs
        ],
        axis=0,
    )  # [n]
    return trailing_mean(gap)


if __name__ == "__main__":
    main()
