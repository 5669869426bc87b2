"""Sample rows for every dataset schema, with every column populated (nullable ones partly null)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from tpgrpo.schemas import encode_png, encode_tensor

LATENT = (4, 8, 8)  # [C, H, W], small stand-in for SD3.5's [16, 64, 64]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))


def rollouts(
    n: int, *, iteration: int = 0, dtype: torch.dtype = torch.float32, offset: int = 0
) -> dict[str, Any]:
    """`n` trajectories with T = 4 steps and a window of W = 3, states in `dtype`."""
    generator = torch.Generator().manual_seed(1000 * iteration + offset)
    steps, window = 4, 3
    states = [
        torch.randn(steps + 1, *LATENT, generator=generator).to(dtype) for _ in range(n)
    ]  # [T+1, C, H, W]
    ode = [torch.randn(window, *LATENT, generator=generator).to(dtype) for _ in range(n)]  # [W, C, H, W]
    enc_states = [encode_tensor(s) for s in states]
    enc_ode = [encode_tensor(o) if i % 2 == 0 else (None, None, None) for i, o in enumerate(ode)]
    ids = [offset + i for i in range(n)]
    return {
        "run_id": ["run-a"] * n,
        "iteration": [iteration] * n,
        "batch": [i // 4 for i in ids],
        "trajectory_id": ids,
        "prompt_id": [f"p{i // 2}" for i in ids],
        "group_id": [i // 2 for i in ids],
        "prompt": [f"{i} red circles" for i in ids],
        "seed": [10_000 + i for i in ids],
        "num_steps": [steps] * n,
        "window_start": [0] * n,
        "window_size": [window] * n,
        "sampler": ["cps"] * n,
        "noise_level": [0.7] * n,
        "guidance_scale": [4.5] * n,
        "sigmas": [[1.0, 0.75, 0.5, 0.25, 0.0]] * n,
        "states": [e[0] for e in enc_states],
        "states_dtype": [e[1] for e in enc_states],
        "states_shape": [e[2] for e in enc_states],
        "ode_states": [e[0] for e in enc_ode],
        "ode_states_dtype": [e[1] for e in enc_ode],
        "ode_states_shape": [e[2] for e in enc_ode],
        "log_probs": [[-0.5 - 0.01 * i, -0.4, -0.3] for i in ids],
        "image": [_png(i) for i in ids],
    }


def branches(n: int, *, iteration: int = 0) -> dict[str, Any]:
    return {
        "iteration": [iteration] * n,
        "trajectory_id": [i // 4 for i in range(n)],
        "boundary": [i % 4 for i in range(n)],
        "grid_index": [i % 4 for i in range(n)],
        "image": [_png(100 + i) for i in range(n)],
        "model_evals": [(4 - i % 4) * 2 for i in range(n)],
    }


def rewards(n: int, *, iteration: int = 0, offset: int = 0) -> dict[str, Any]:
    ids = [offset + i for i in range(n)]
    return {
        "iteration": [iteration] * n,
        "trajectory_id": [i // 4 for i in ids],
        "boundary": [i % 4 for i in ids],
        "reward_key": ["shapes"] * n,
        "score": [i / 7 for i in ids],
        "strict": [None if i % 3 == 0 else i % 3 == 1 for i in ids],
        "details": [json.dumps({"found": i}) if i % 2 else None for i in ids],
        "reward_model": ["shapes@1"] * n,
    }


def annotations(n: int, *, iteration: int = 0) -> dict[str, Any]:
    return {
        "iteration": [iteration] * n,
        "trajectory_id": [i // 3 for i in range(n)],
        "group_id": [i // 6 for i in range(n)],
        "batch": [0] * n,
        "step": [i % 3 for i in range(n)],
        "grid_index": [i % 3 for i in range(n)],
        "mode": ["tp_constrained"] * n,
        "increment": [0.1 * (i % 3) - 0.1 for i in range(n)],
        "aggregated": [0.25 - 0.05 * i for i in range(n)],
        "turning_point": [i % 4 == 1 for i in range(n)],
        "kept": [i % 8 == 1 for i in range(n)],
        "step_reward": [0.01 * i for i in range(n)],
        "advantage": [(-1.0) ** i for i in range(n)],
    }


def updates(n: int, *, iteration: int = 0) -> dict[str, Any]:
    metrics = ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm", "lr")
    rows: dict[str, Any] = {
        "iteration": [iteration] * n,
        "optimizer_step": list(range(n)),
        "epoch": [0] * n,
        "samples": [96] * n,
    }
    rows.update({m: [0.001 * (i + k) for i in range(n)] for k, m in enumerate(metrics)})
    # per trained step (W = 3): schema v2
    rows["grad_norm_by_step"] = [[0.1 * i, 0.2, 0.3] for i in range(n)]
    rows["clip_frac_by_step"] = [[0.0, 0.5, 1.0]] * n
    rows["adv_abs_by_step"] = [[1.0, 0.5, 0.25]] * n
    rows["adv_nonzero_by_step"] = [[1.0, 1.0, 0.5]] * n
    return rows


def prompts(n: int) -> dict[str, Any]:
    return {
        "prompt_id": [f"p{i}" for i in range(n)],
        "prompt": [f"{i} blue squares" for i in range(n)],
        "task": ["counting"] * n,
        "spec": [json.dumps({"count": i}) if i % 2 else None for i in range(n)],
        "split": ["train" if i % 4 else "eval" for i in range(n)],
    }


def eval_rows(n: int) -> dict[str, Any]:
    return {
        "checkpoint": ["iter=0004"] * n,
        "prompt_id": [f"p{i}" for i in range(n)],
        "task": ["position"] * n,
        "seed": list(range(n)),
        "image": [_png(200 + i) for i in range(n)],
        "reward_key": ["shapes"] * n,
        "score": [i % 2 * 1.0 for i in range(n)],
        "strict": [bool(i % 2) for i in range(n)],
        "details": [json.dumps({"i": i}) for i in range(n)],
    }


def sample(name: str, n: int) -> dict[str, Any]:
    """`n` sample rows of dataset `name`."""
    builders = {
        "prompts": prompts,
        "rollouts": rollouts,
        "branches": branches,
        "rewards": rewards,
        "annotations": annotations,
        "updates": updates,
        "eval": eval_rows,
    }
    return builders[name](n)
