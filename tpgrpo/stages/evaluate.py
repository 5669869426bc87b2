"""Evaluation: pure-ODE samples of a fixed prompt set, scored (GenEval-style per-task accuracy).

The noise of sample `(prompt row p, replicate r)` comes from `trajectory_seed(seed, p, r)` only, so
two checkpoints evaluated with the same prompts and seed see the same initial noise: comparisons
between them are paired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tpgrpo.algorithm import ode_step
from tpgrpo.schemas.images import encode_png
from tpgrpo.stages.common import chunks, trajectory_seed
from tpgrpo.stages.progress import progress_bar
from tpgrpo.storage import DatasetWriter

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


@torch.no_grad()
def sample_ode(
    policy: Policy,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    num_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
) -> np.ndarray:
    """Pure-ODE samples (Euler on the model's grid), one per (prompt, seed): uint8 `[B, H, W, 3]`."""
    shape = policy.latent_shape(height, width)
    x = torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )  # [B, C, h, w]
    x = x.to(policy.device)
    sigmas = policy.sigmas(num_steps, height, width)  # [T+1], the family pipeline's grid
    cond = policy.encode(list(prompts))
    uncond = policy.encode([""] * len(prompts)) if guidance_scale > 1.0 else None
    for k in range(num_steps):
        sigma = torch.full((x.shape[0],), float(sigmas[k]), device=policy.device)  # [B]
        v = policy.velocity(x, sigma, cond, uncond, guidance_scale)
        x = ode_step(x, v, float(sigmas[k]), float(sigmas[k + 1]))
    return policy.decode(x)


def evaluate(
    policy: Policy,
    reward: Any,
    prompts: list[dict[str, Any]],
    *,
    checkpoint: str,
    replicates: int,
    seed: int,
    num_steps: int,
    guidance_scale: float,
    height: int,
    width: int,
    batch: int,
    output: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample and score `prompts × replicates`; write the `eval` dataset rows to `output` if given.

    Returns:
        `{"rows": columns dict, "summary": per-task and overall means, "seconds": …}`.
    """
    started = time.perf_counter()
    work = [(p, r) for p in range(len(prompts)) for r in range(replicates)]
    cols: dict[str, list[Any]] = {
        k: []
        for k in (
            "checkpoint",
            "prompt_id",
            "task",
            "seed",
            "image",
            "reward_key",
            "score",
            "strict",
            "details",
        )
    }
    bar = progress_bar(total=len(work), desc=f"evaluate {checkpoint}", unit="img")
    writer = DatasetWriter(output, "eval", storage_options=storage_options) if output else None
    try:
        for idx in chunks(list(range(len(work))), batch):
            items = [work[i] for i in idx]
            texts = [prompts[p]["prompt"] for p, _ in items]
            seeds = [trajectory_seed(seed, p, r) for p, r in items]
            images = sample_ode(
                policy,
                texts,
                seeds,
                num_steps=num_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
            )
            result = reward.score(images, texts)
            part: dict[str, list[Any]] = {
                "checkpoint": [checkpoint] * len(items),
                "prompt_id": [prompts[p]["prompt_id"] for p, _ in items],
                "task": [prompts[p]["task"] for p, _ in items],
                "seed": seeds,
                "image": [encode_png(im) for im in images],
                "reward_key": [reward.key] * len(items),
                "score": result.score.tolist(),
                "strict": result.strict.tolist() if result.strict is not None else [None] * len(items),
                "details": [json.dumps(d, sort_keys=True) for d in result.details],
            }
            if writer is not None:
                writer.write(part)
            for k, v in part.items():
                cols[k].extend(v if k != "image" else [None] * len(v))  # keep images out of memory
            bar.update(len(items))
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return {"rows": cols, "summary": summarize(cols), "seconds": time.perf_counter() - started}


def summarize(cols: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Per-task and overall mean score and strict accuracy (GenEval's overall = mean over tasks)."""
    tasks = sorted(set(cols["task"]))
    score = np.asarray(cols["score"], dtype=np.float64)
    strict = np.asarray([bool(s) if s is not None else np.nan for s in cols["strict"]], dtype=np.float64)
    task_arr = np.asarray(cols["task"])
    per_task = {
        t: {
            "n": int((task_arr == t).sum()),
            "score": float(score[task_arr == t].mean()),
            "strict": float(np.nanmean(strict[task_arr == t]))
            if not np.isnan(strict[task_arr == t]).all()
            else None,
        }
        for t in tasks
    }
    stricts = [v["strict"] for v in per_task.values() if v["strict"] is not None]
    return {
        "n": len(score),
        "score": float(score.mean()) if score.size else 0.0,
        "strict": float(np.nanmean(strict)) if score.size and not np.isnan(strict).all() else None,
        "task_mean_strict": float(np.mean(stricts)) if stricts else None,
        "tasks": per_task,
        **detail_means(cols.get("details") or []),
    }


QUALITY = ("background_dev", "stray_frac", "specks")


def detail_means(details: Sequence[str | None]) -> dict[str, Any]:
    """From the reward's JSON details (where it writes them, as `shapes` does): the mean credit per
    requirement kind over every image that has one — `color` is the colour accuracy (objects named
    with a colour drawn in it), `relation` the position accuracy — and the mean image-quality
    figures (background deviation, stray-pixel fraction, specks)."""
    credit: dict[str, list[float]] = {}
    quality: dict[str, list[float]] = {k: [] for k in QUALITY}
    for text in details:
        d = json.loads(text) if text else {}
        for name, value in (d.get("requirements") or {}).items():
            credit.setdefault(name.split(":", 1)[0], []).append(float(value))
        for k in QUALITY:
            if k in d:
                quality[k].append(float(d[k]))
    out: dict[str, Any] = {}
    if credit:
        out["requirements"] = {k: float(np.mean(v)) for k, v in sorted(credit.items())}
    if any(quality.values()):
        out["quality"] = {k: float(np.mean(v)) for k, v in quality.items() if v}
    return out
