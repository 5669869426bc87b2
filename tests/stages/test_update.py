"""Update stage: first-pass ratio 1, the step moves log-probs in the direction of the advantage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tpgrpo.algorithm import MODES
from tpgrpo.stages import update
from tpgrpo.stages.checkpoints import initial_state
from tpgrpo.storage import write_dataset

from .test_rollout import _run


def _annotations(roll: Any, tmp: Path, advantage: np.ndarray) -> str:
    """An annotations dataset with the given `[N, W]` advantages."""
    n, w = advantage.shape
    uri = str(tmp / "ann")
    cols = {
        "iteration": [0] * (n * w),
        "trajectory_id": np.repeat(np.arange(n), w),
        "group_id": np.repeat(roll.column("group_id").to_numpy(), w),
        "batch": np.repeat(roll.column("batch").to_numpy(), w),
        "step": np.tile(np.arange(w), n),
        "grid_index": np.tile(np.arange(w), n),
        "mode": [MODES[0]] * (n * w),
        "increment": np.zeros(n * w),
        "aggregated": np.zeros(n * w),
        "turning_point": np.zeros(n * w, bool),
        "kept": np.zeros(n * w, bool),
        "step_reward": np.zeros(n * w),
        "advantage": advantage.reshape(-1),
    }
    write_dataset(uri, "annotations", pa.table(cols), inputs={}, config_hash="t")
    return uri


def _log_probs(policy: Any, cfg: Any, data: update.UpdateData) -> torch.Tensor:
    """Recomputed log-probs of every trained transition `[N, W]` under the current policy."""
    cond = policy.encode(data.prompts)
    uncond = policy.encode([""] * len(data.prompts))
    n, w = data.log_probs.shape
    items = [(r, j) for r in range(n) for j in range(w)]
    out = torch.zeros(n, w)
    for r, j in items:
        k = data.window_start + j
        x, xn = data.states[r, k][None], data.states[r, k + 1][None]
        s, s1 = data.sigmas[k][None], data.sigmas[k + 1][None]
        with torch.no_grad():
            v = policy.velocity(x, s, cond.select([r]), uncond.select([r]), cfg.sampling.guidance_scale)
        out[r, j] = update._recompute(cfg, x, v, s, s1, xn, float(data.sigmas[1])).log_prob[0]
    return out


def test_first_pass_ratio_one_and_direction(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    cfg = make_cfg(update__lr=1e-4, update__optimizer_steps=1, update__clip_range=10.0, sampling__num_steps=4)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    # +1 for the first half of the trajectories, -1 for the rest
    adv = np.where(np.arange(n)[:, None] < n // 2, 1.0, -1.0) * np.ones((1, w))
    data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path, adv))
    before = _log_probs(policy, cfg, data)
    torch.testing.assert_close(before, data.log_probs, rtol=0, atol=1e-5)  # recomputed = stored
    optimizer, ema, state = initial_state(cfg, policy)
    rows = update.train_iteration(policy, cfg, data, optimizer, ema, state, iteration=0)
    assert len(rows) == 1
    assert abs(rows[0]["ratio_mean"] - 1.0) < 1e-5 and rows[0]["approx_kl"] < 1e-9  # first pass: ratio 1
    assert rows[0]["samples"] == n * w and rows[0]["grad_norm"] > 0
    after = _log_probs(policy, cfg, data)
    delta = after - before  # [N, W]
    # a small gradient step raises the advantage-weighted log-likelihood, and moves each half's
    # log-probs in the direction of its advantage
    assert float((torch.tensor(adv, dtype=torch.float32) * delta).sum()) > 0
    assert delta[: n // 2].mean() > 0 > delta[n // 2 :].mean()


def test_zero_advantages_skip_the_update(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    cfg = make_cfg(sampling__num_steps=4)
    roll = _run(cfg, policy, tmp_path, "roll")
    adv = np.zeros((roll.num_rows, roll.column("window_size")[0].as_py()))
    data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path, adv))
    optimizer, ema, state = initial_state(cfg, policy)
    assert update.train_iteration(policy, cfg, data, optimizer, ema, state, iteration=0) == []
    assert state.optimizer_step == 0


def test_run_counts_the_transformer_samples(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    cfg = make_cfg(update__optimizer_steps=1, update__kl_beta=0.01, sampling__num_steps=4)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    adv = np.where(np.arange(n)[:, None] < n // 2, 1.0, -1.0) * np.ones((1, w))
    ann = _annotations(roll, tmp_path, adv)
    optimizer, ema, state = initial_state(cfg, policy)
    seen: list[int] = []
    handle = policy.transformer.register_forward_hook(
        lambda _m, _a, kwargs, _out: seen.append(int(kwargs["hidden_states"].shape[0])), with_kwargs=True
    )
    try:
        _rows, stats = update.run(
            cfg,
            policy,
            optimizer,
            ema,
            state,
            iteration=0,
            rollouts_uri=str(tmp_path / "roll"),
            annotations_uri=ann,
        )
    finally:
        handle.remove()
    assert stats["model_evals"] == 2 * n * w  # the policy's and the KL reference's velocity
    cfg_factor = 2 if cfg.sampling.guidance_scale > 1.0 else 1  # SD3's CFG batch [uncond; cond]
    assert stats["forward_samples"] == cfg_factor * stats["model_evals"] == sum(seen)
