"""Branch-stage efficiency: the batched ODE completions against their floor and the naive approach.

For each `T` and number of trajectories `n` (one rollout batch), on the tiny model:

- **stage**: `tpgrpo.stages.branch.complete_branches` — every active branch of a grid level in one
  batch, cut into chunks of the model's best batch size, first step of each branch reused from the
  rollout (`W` evaluations fewer per trajectory);
- **floor**: the same number of velocity evaluations at the model's best per-sample throughput,
  measured in the same run over batch sizes 1 … 256 (`floor_ratio = floor time / stage time`);
- **naive**: the reference code's approach — one ODE completion per branch point `k`, over the
  batch of `n` trajectories (`Σ_k (T − k)` calls of `n` samples; no velocity reuse);
- decoding the completions (the same for every approach) is timed separately.

Prints a table and writes `bench/results/branch.json`; the CPU figures for `T = 10`, `n = 8` are
the top-level keys `floor_ratio` and `naive_speedup`. `--quick` runs `T = 10` only (< 2 minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from tpgrpo.config import load_config_data
from tpgrpo.stages.batching import CANDIDATES, measure_throughput

RESULTS = Path(__file__).parent / "results" / "branch.json"


def load_tiny_policy(cfg: Any) -> Any:
    """The embedded tiny policy, or a random-weight model of the same architecture if not built."""
    from tpgrpo.models import load_policy
    from tpgrpo.models.factory import embedded_checkpoint_dir

    if (embedded_checkpoint_dir() / "model_index.json").is_file():
        return load_policy(cfg.model), "embedded:tiny"
    import tempfile

    from tpgrpo.world.prompts import VOCABULARY
    from tpgrpo.world.tiny import build_tiny_pipeline

    path = Path(tempfile.mkdtemp()) / "tiny"
    build_tiny_pipeline(VOCABULARY).save_pretrained(path)
    return load_policy(cfg.model.model_copy(update={"path": str(path)})), "random tiny (same architecture)"


def make_rollouts(policy: Any, cfg: Any, n: int) -> Any:
    """`n` trajectories sampled and encoded as the rollout stage does, as an Arrow table."""
    import pyarrow as pa

    from tpgrpo.stages.common import make_grid, trajectory_seed
    from tpgrpo.stages.rollout import Trajectory, sample_trajectories, trajectory_rows
    from tpgrpo.world.prompts import load_prompts

    prompts = [r.prompt for r in load_prompts("train")]
    trajs = [
        Trajectory(t, t // 8, 0, f"p{t}", prompts[(t // 8) % len(prompts)], trajectory_seed(0, 0, t))
        for t in range(n)
    ]
    grid = make_grid(cfg, policy)
    out = sample_trajectories(policy, cfg, grid, trajs)
    return pa.table(trajectory_rows(trajs, out, run_id="bench", iteration=0, cfg=cfg, grid=grid))


@torch.no_grad()
def naive(policy: Any, cfg: Any, table: Any) -> tuple[float, int, int]:
    """One ODE completion per branch point k over all n trajectories (no reuse): seconds, calls, evals."""
    from tpgrpo.algorithm import ode_step
    from tpgrpo.schemas.tensors import decode_tensor_column

    states = decode_tensor_column(table, "states")  # [n, T+1, C, h, w]
    sigmas = torch.tensor(table.column("sigmas")[0].as_py())
    n, t_steps = states.shape[0], states.shape[1] - 1
    w = int(table.column("window_size")[0].as_py())
    prompts = table.column("prompt").to_pylist()
    cond, uncond = policy.encode(prompts), policy.encode([""] * n)
    calls = evals = 0
    start = time.perf_counter()
    for k in range(w):
        x = states[:, k]
        for g in range(k, t_steps):
            sig = torch.full((n,), float(sigmas[g]))
            v = policy.velocity(x, sig, cond, uncond, cfg.sampling.guidance_scale)
            x = ode_step(x, v, float(sigmas[g]), float(sigmas[g + 1]))
            calls += 1
            evals += n
    return time.perf_counter() - start, calls, evals


def best_of(fn: Any, repeats: int) -> Any:
    """The fastest of `repeats` runs of `fn() -> (seconds, ...)` (the machine is shared: noise only adds)."""
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T = 10 only, n = 8 and 32, fewer repeats")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    steps_list = [10] if args.quick else [6, 10, 16]
    ns = [8, 32] if args.quick else [8, 16, 32, 64]
    repeats = args.repeats or (2 if args.quick else 3)

    base = load_config_data({"model": {"path": "embedded:tiny"}})
    policy, model_name = load_tiny_policy(base)
    from tpgrpo.stages.branch import complete_branches

    shape = policy.latent_shape(64, 64)
    cond, uncond = policy.encode(["a photo of a red circle"]), policy.encode([""])
    rates = {
        b: max(measure_throughput(policy, b, shape, cond, uncond, 4.5, repeats=3) for _ in range(repeats))
        for b in CANDIDATES
    }
    best = max(rates, key=lambda b: rates[b])
    print(f"model: {model_name}; velocity evaluations/s by batch (CFG, best of {repeats}):")
    print("  " + "  ".join(f"{b}:{rates[b]:.0f}" for b in CANDIDATES) + f"  -> best batch {best}")

    rows = []
    for t_steps in steps_list:
        cfg = load_config_data({"model": {"path": "embedded:tiny"}, "sampling": {"num_steps": t_steps}})
        for n in ns:
            table = make_rollouts(policy, cfg, n)
            stage = best_of(
                functools.partial(_timed, complete_branches, policy, cfg, table, chunk=best), repeats
            )
            secs, result = stage
            plain_cfg = load_config_data(
                {
                    "model": {"path": "embedded:tiny"},
                    "sampling": {"num_steps": t_steps},
                    "branch": {"reuse_rollout_velocity": False},
                }
            )
            no_reuse = complete_branches(policy, plain_cfg, table, chunk=best)
            nv_secs, nv_calls, nv_evals = best_of(functools.partial(naive, policy, cfg, table), repeats)
            dec_start = time.perf_counter()
            policy.decode(result.latents)
            decode_s = time.perf_counter() - dec_start
            floor_s = result.model_evals / rates[best]
            row = {
                "T": t_steps,
                "n": n,
                "chunk": best,
                "stage_s": secs,
                "stage_calls": result.model_calls,
                "stage_evals": result.model_evals,
                "evals_without_reuse": no_reuse.model_evals,
                "evals_per_trajectory": result.model_evals / n,
                "floor_s": floor_s,
                "floor_ratio": floor_s / secs,
                "naive_s": nv_secs,
                "naive_calls": nv_calls,
                "naive_evals": nv_evals,
                "naive_speedup": nv_secs / secs,
                "decode_s": decode_s,
                "images_per_s": len(result.latent_row) / (secs + decode_s),
                "naive_images_per_s": len(result.latent_row) / (nv_secs + decode_s),
            }
            rows.append(row)
            print(
                f"T={t_steps:>2} n={n:>2}: stage {secs:6.2f}s {result.model_calls:>4} calls "
                f"{result.model_evals:>5} evals ({row['evals_per_trajectory']:.0f}/traj, "
                f"{no_reuse.model_evals // n} without reuse) | floor {floor_s:6.2f}s "
                f"ratio {row['floor_ratio']:.2f} | naive {nv_secs:6.2f}s {nv_calls:>4} calls "
                f"-> x{row['naive_speedup']:.2f} | decode {decode_s:.2f}s"
            )
    key = next(r for r in rows if r["T"] == 10 and r["n"] == 8)
    result_json = {
        "floor_ratio": key["floor_ratio"],
        "naive_speedup": key["naive_speedup"],
        "device": "cpu",
        "model": model_name,
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "throughput_by_batch": {str(b): r for b, r in rates.items()},
        "best_batch": best,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result_json, indent=1))
    print(
        f"T=10, n=8: floor_ratio {key['floor_ratio']:.2f}, "
        f"naive_speedup {key['naive_speedup']:.2f} -> {RESULTS}"
    )


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


if __name__ == "__main__":
    main()
