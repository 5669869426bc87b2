"""What RL can reinforce on mini-GenEval: per task, how often a group of G samples holds a success.

GRPO learns only from groups whose rewards differ, and it can only reinforce a strict success the
model already produces sometimes. For every prompt of the train and test sets, the base model
(the shipped tiny checkpoint, `configs/tiny.yaml`: T = 10, `cps` a = 0.7, CFG 4.5, the rollout
stage's own sampler and seeds) draws a group of `--group-size` training samples; the `shapes` reward
scores them. Per split and task:

- **mean score** (partial credit) and **strict** accuracy of single samples;
- **groups with a strict success**: share of prompts whose G samples hold ≥ 1 strict success;
- **zero-std groups**: share of prompts whose G rewards are all equal (no GRPO signal at all).

Prints a table, writes `bench/results/signal_share.json`.

```
.venv/bin/python bench/signal_share.py                  # 478 prompts × G = 8 (~10 min on one core)
.venv/bin/python bench/signal_share.py --max-prompts 24  # a smoke test
```
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "signal_share.json"


def group_stats(scores: np.ndarray, strict: np.ndarray) -> dict[str, float]:
    """Statistics of `[P, G]` scores / strict flags of P prompt groups."""
    return {
        "prompts": int(scores.shape[0]),
        "mean_score": float(scores.mean()),
        "strict": float(strict.mean()),
        "groups_with_strict_success": float(strict.any(axis=1).mean()),
        "zero_std_groups": float((scores.std(axis=1) == 0).mean()),
    }


def measure(split: str, cfg: Any, policy: Any, reward: Any, max_prompts: int | None) -> dict[str, Any]:
    """Sample G trajectories per prompt of `split` and score them; per-task group statistics."""
    from tpgrpo.stages.common import make_grid, trajectory_seed
    from tpgrpo.stages.rollout import Trajectory, sample_trajectories
    from tpgrpo.world.prompts import load_prompts

    records = load_prompts(split)[:max_prompts]
    g = cfg.rollout.group_size
    grid = make_grid(cfg, policy)
    chunk = max(1, cfg.model.eval_batch)
    by_task: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for p, rec in enumerate(records):
        trajs = [
            Trajectory(p * g + m, p, 0, rec.prompt_id, rec.prompt, trajectory_seed(cfg.seed, 0, p * g + m))
            for m in range(g)
        ]
        images = np.concatenate(
            [
                sample_trajectories(policy, cfg, grid, trajs[i : i + chunk])["images"]
                for i in range(0, g, chunk)
            ]
        )  # [G, H, W, 3]
        result = reward.score(images, [rec.prompt] * g)
        strict = result.strict if result.strict is not None else np.zeros(g, bool)
        by_task[rec.task].append((np.asarray(result.score, float), np.asarray(strict, bool)))
    out: dict[str, Any] = {}
    for task, groups in sorted(by_task.items()):
        out[task] = group_stats(np.stack([s for s, _ in groups]), np.stack([t for _, t in groups]))
    everything = [x for groups in by_task.values() for x in groups]
    out["all"] = group_stats(np.stack([s for s, _ in everything]), np.stack([t for _, t in everything]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group-size", type=int, default=None, help="G (default: tiny.yaml's)")
    ap.add_argument("--max-prompts", type=int, default=None, help="first N prompts of each split")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from tpgrpo.config import load_config
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.stages.common import make_grid

    sets = [f"rollout.group_size={args.group_size}"] if args.group_size else []
    cfg = load_config(ROOT / "configs" / "tiny.yaml", sets)
    ctx = RunContext.create(cfg, "signal-share", root=str(ROOT / "runs"))
    policy, reward = ctx.policy(), ctx.reward()  # the base model: the fresh adapter is the identity
    started = time.perf_counter()
    splits = {s: measure(s, cfg, policy, reward, args.max_prompts) for s in ("train", "test")}
    result = {
        "group_size": cfg.rollout.group_size,
        "sampler": cfg.sampling.sampler,
        "window": [make_grid(cfg, policy).window.start, make_grid(cfg, policy).window.size],
        "seconds": time.perf_counter() - started,
        "splits": splits,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    g = cfg.rollout.group_size
    print(f"base model, G = {g}, {cfg.sampling.sampler} sampling as in training ({result['seconds']:.0f} s)")
    print("| split | task | prompts | mean score | strict | groups with a strict success | zero-std groups |")
    print("|---|---|---|---|---|---|---|")
    for split, tasks in splits.items():
        for task, st in tasks.items():
            print(
                f"| {split} | {task} | {st['prompts']} | {st['mean_score']:.3f} | {st['strict']:.3f} | "
                f"{st['groups_with_strict_success']:.2f} | {st['zero_std_groups']:.2f} |"
            )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
