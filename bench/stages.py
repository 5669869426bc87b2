"""Where an iteration's time goes: per-stage wall time and the storage and orchestration overhead.

Runs the real train flow (Prefect, threads runner) on the tiny config in this process, with the
data plane's readers and writers and each stage's work timed by wrappers, and reports per stage:

- **compute**: the stage's own work (model evaluations, decoding, scoring, annotation, training);
- **storage**: Parquet reads (`read_table` / `iter_batches`), part writes and manifests
  (`finalize_dataset`, checkpoints);
- **orchestration**: the flow's wall time minus the stage functions' time (Prefect task and flow
  bookkeeping, logging). The temporary Prefect server's start is reported separately: it happens
  once per process, not per iteration.

Prints a table and writes `bench/results/stages.json`. Target: storage + orchestration ≤ 10 % of an
iteration. `--quick`: 1 iteration of a smaller batch (< 2 minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "stages.json"
CURRENT: list[str] = ["other"]  # the stage whose function is running (flows run one at a time)
TIMES: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))


def timed(category: str) -> Any:
    """Decorator adding a call's wall time to TIMES[current stage][category]."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                TIMES[CURRENT[0]][category] += time.perf_counter() - start

        return inner

    return wrap


def stage_scope(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        CURRENT[0] = name
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name]["total"] += time.perf_counter() - start
            CURRENT[0] = "other"

    return inner


def instrument() -> None:
    """Wrap the storage calls (where stages import them) and the stage steps."""
    from tpgrpo import storage
    from tpgrpo.pipeline import annotate as annotate_step_module
    from tpgrpo.pipeline import evaluate as evaluate_step_module
    from tpgrpo.pipeline import shards, start, steps
    from tpgrpo.pipeline import update as update_step_module
    from tpgrpo.stages import annotate, branch, checkpoints, rollout, score, update

    # the step modules import storage and checkpoint functions by name: wrap them there too
    step_modules = (start, shards, annotate_step_module, update_step_module, evaluate_step_module)
    for module in (storage, rollout, branch, score, annotate, update, *step_modules):
        for name in ("read_table", "iter_batches", "write_dataset", "finalize_dataset"):
            if hasattr(module, name):
                setattr(module, name, timed("storage")(getattr(module, name)))
    cls = storage.DatasetWriter  # one class, imported by every stage
    cls.write = timed("storage")(cls.write)  # type: ignore[method-assign]
    cls.close = timed("storage")(cls.close)  # type: ignore[method-assign]
    for name in ("write_checkpoint", "load_checkpoint", "load_adapter"):
        setattr(checkpoints, name, timed("storage")(getattr(checkpoints, name)))
        for module in step_modules:
            if hasattr(module, name):
                setattr(module, name, getattr(checkpoints, name))
    for stage in ("rollout", "branch", "score"):
        steps.SHARD_FUNCS[stage] = stage_scope(stage, steps.SHARD_FUNCS[stage])
    steps.finalize = timed("storage")(steps.finalize)  # type: ignore[assignment]
    steps.annotate_step = stage_scope("annotate", steps.annotate_step)  # type: ignore[assignment]
    steps.update_step = stage_scope("update", steps.update_step)  # type: ignore[assignment]
    steps.init_run = stage_scope("init", steps.init_run)  # type: ignore[assignment]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 iteration, 4 prompts x 8")
    ap.add_argument("--iterations", type=int, default=2)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tpgrpo-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    from tpgrpo.config import load_config
    from tpgrpo.flows.train import train

    sets = [f"storage.root={home / 'runs'}"]
    iterations = 1 if args.quick else args.iterations
    if args.quick:
        sets += ["rollout.batches_per_iteration=1"]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", sets)
    instrument()

    # start Prefect's temporary server once, outside the measured flow
    from prefect import flow

    @flow(name="warm-up")
    def warm_up() -> None:
        return None

    start = time.perf_counter()
    warm_up()
    server_s = time.perf_counter() - start

    TIMES.clear()
    start = time.perf_counter()
    train(cfg, run_id="bench", iterations=iterations)
    wall = time.perf_counter() - start
    per_stage = {}
    for stage in ("init", "rollout", "branch", "score", "annotate", "update"):
        t = TIMES.get(stage, {})
        total, storage_s = t.get("total", 0.0), t.get("storage", 0.0)
        per_stage[stage] = {
            "total_s": total,
            "storage_s": storage_s,
            "compute_s": max(0.0, total - storage_s),
        }
    in_stages = sum(v["total_s"] for v in per_stage.values())
    outside_storage = TIMES.get("other", {}).get("storage", 0.0)  # finalize and others outside stage scope
    storage_total = sum(v["storage_s"] for v in per_stage.values()) + outside_storage
    orchestration = max(0.0, wall - in_stages - outside_storage)
    overhead = (storage_total + orchestration) / wall
    groups = cfg.rollout.groups
    print(
        f"tiny config, {iterations} iteration(s), {groups} prompts x G={cfg.rollout.group_size}; "
        f"flow wall {wall:.1f}s (+ Prefect server start {server_s:.1f}s)"
    )
    print(f"{'stage':<10}{'total s':>10}{'compute s':>11}{'storage s':>11}{'share':>8}")
    for stage, v in per_stage.items():
        print(
            f"{stage:<10}{v['total_s']:>10.2f}{v['compute_s']:>11.2f}{v['storage_s']:>11.2f}"
            f"{v['total_s'] / wall:>8.1%}"
        )
    print(f"{'storage':<10}{storage_total:>10.2f}{'':>11}{'':>11}{storage_total / wall:>8.1%}")
    print(f"{'prefect':<10}{orchestration:>10.2f}{'':>11}{'':>11}{orchestration / wall:>8.1%}")
    print(f"storage + orchestration overhead: {overhead:.1%} of the flow (target <= 10%)")
    result = {
        "iterations": iterations,
        "quick": args.quick,
        "wall_s": wall,
        "prefect_server_start_s": server_s,
        "stages": per_stage,
        "storage_s": storage_total,
        "orchestration_s": orchestration,
        "overhead_share": overhead,
        "load_average": os.getloadavg(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
