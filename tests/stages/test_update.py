"""Update stage: first-pass ratio 1, the step moves log-probs in the direction of the advantage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
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


def test_gradient_checkpointing_gives_the_same_step(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """`update.gradient_checkpointing` recomputes activations: same rows and weights, less memory."""
    from tpgrpo.models.lora import lora_parameters, lora_state_dict

    cfg = make_cfg(update__optimizer_steps=1, sampling__num_steps=4)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    adv = np.where(np.arange(n)[:, None] % 2 == 0, 1.0, -1.0) * np.ones((1, w))
    data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path, adv))
    start = {k: v.clone() for k, v in lora_state_dict(policy.transformer).items()}
    results = []
    for checkpointing in (False, True):
        for k, p in lora_parameters(policy.transformer).items():
            p.data.copy_(start[k])
        optimizer, ema, state = initial_state(cfg, policy)
        c = cfg.model_copy(
            update={"update": cfg.update.model_copy(update={"gradient_checkpointing": checkpointing})}
        )
        rows = update.train_iteration(policy, c, data, optimizer, ema, state, iteration=0)
        assert policy.transformer.is_gradient_checkpointing is checkpointing
        results.append((rows, lora_state_dict(policy.transformer)))
    (rows_off, weights_off), (rows_on, weights_on) = results
    assert rows_on[0]["grad_norm"] == pytest.approx(rows_off[0]["grad_norm"], rel=1e-5)
    assert rows_on[0]["grad_norm"] > 0
    for k in weights_off:
        torch.testing.assert_close(weights_on[k], weights_off[k], rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(weights_off[k], start[k]) for k in start)  # the step moved the adapter


def _step_gradient_norms(policy: Any, cfg: Any, data: update.UpdateData) -> tuple[list[float], float]:
    """Each trained step's gradient on its own (fresh backward, step j's transitions only, weighted by
    their share of the optimizer step), and the norm of the full gradient of all transitions at once."""
    from tpgrpo.models.lora import lora_parameters

    params = list(lora_parameters(policy.transformer).values())
    cond = policy.encode(data.prompts)
    uncond = policy.encode([""] * len(data.prompts))
    n, w = data.log_probs.shape
    flats = []
    policy.transformer.train()
    try:
        for j in range(w):
            for p in params:
                p.grad = None
            out = update.transition_loss(policy, cfg, data, [(r, j) for r in range(n)], cond, uncond)
            (out.loss * (n / (n * w))).backward()
            flats.append(torch.cat([p.grad.reshape(-1) for p in params]))  # [P]
        for p in params:
            p.grad = None
        every = [(r, j) for r in range(n) for j in range(w)]
        out = update.transition_loss(policy, cfg, data, every, cond, uncond)
        out.loss.backward()
        full = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
    finally:
        for p in params:
            p.grad = None
        policy.transformer.eval()
    return [float(torch.linalg.vector_norm(f)) for f in flats], full


def test_per_step_diagnostics(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """`grad_norm_by_step[j]` is the norm of step j's part of the loss gradient (checked against a
    separate backward per step); a step whose advantages are all zero has exactly zero gradient;
    the per-step advantage statistics and clip fractions are those of the step's transitions."""
    cfg = make_cfg(update__optimizer_steps=1, update__micro_batch=4, sampling__num_steps=5)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    assert w == 3  # T = 5 on the shift-3 grid (see test_rollout)
    # step 0: ±1 by half; step 1: all zero (no signal); step 2: ±2 on the first two trajectories only
    adv = np.zeros((n, w))
    adv[:, 0] = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    adv[:2, 2] = [2.0, -2.0]
    data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path, adv))
    expected, full = _step_gradient_norms(policy, cfg, data)
    optimizer, ema, state = initial_state(cfg, policy)
    (row,) = update.train_iteration(policy, cfg, data, optimizer, ema, state, iteration=0)
    got = row["grad_norm_by_step"]
    assert len(got) == w
    assert got[1] == 0.0 and expected[1] == 0.0  # no advantage, no KL: no gradient
    assert got[0] > 0 and got[2] > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)
    # the parts add up to the optimizer step's gradient (before clipping)
    assert row["grad_norm"] == pytest.approx(full, rel=1e-4)
    # mean |A| by step: 1, 0, (2 + 2)/n; share non-zero: 1, 0, 2/n
    np.testing.assert_allclose(row["adv_abs_by_step"], [1.0, 0.0, 4.0 / n])
    np.testing.assert_allclose(row["adv_nonzero_by_step"], [1.0, 0.0, 2.0 / n])
    assert row["clip_frac_by_step"] == [0.0, 0.0, 0.0]  # first pass: ratio exactly 1


def test_per_step_clip_fraction(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """A second optimizer step over other trajectories of the same iteration sees moved weights: its
    ratios are off 1 by more than ε = 1e-5 at every step (advantage or not), while the first step's
    are 1 up to float noise (~1e-7: the update recomputes log-probs in other batch shapes than the
    rollout, so GEMM blocking differs); the row's overall clip fraction is the transition-weighted
    mean of the per-step ones (equal counts here)."""
    cfg = make_cfg(update__optimizer_steps=2, update__clip_range=1e-5, update__lr=1e-3, sampling__num_steps=5)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    adv = np.where(np.arange(n)[:, None] % 2 == 0, 1.0, -1.0) * np.ones((1, w))
    adv[:, 1] = 0.0  # step 1: no signal, still recomputed (its ratio moves too)
    data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path, adv))
    optimizer, ema, state = initial_state(cfg, policy)
    first, second = update.train_iteration(policy, cfg, data, optimizer, ema, state, iteration=0)
    assert first["clip_frac_by_step"] == [0.0, 0.0, 0.0]
    assert all(c > 0.5 for c in second["clip_frac_by_step"])  # the weights moved: ratios off 1 by > ε
    assert second["grad_norm_by_step"][1] == 0.0  # clipped or not, zero advantage carries no gradient
    assert second["clip_frac"] == pytest.approx(float(np.mean(second["clip_frac_by_step"])), rel=1e-9)


def test_timestep_fraction_trains_a_seeded_subset(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """`update.timestep_fraction`: each trajectory trains `floor(W·f)` of its steps, the subset of
    `trained_step_mask` (seed, iteration, epoch, trajectory); untrained steps carry no gradient; the
    loss is the mean over the trained transitions (so the gradient is W/k times the full-window
    update's on the same transitions); a rerun from the same weights is bit-identical."""
    from tpgrpo.algorithm import trained_step_mask
    from tpgrpo.models.lora import lora_parameters, lora_state_dict

    cfg = make_cfg(update__optimizer_steps=1, sampling__num_steps=5, update__timestep_fraction=0.5)
    roll = _run(cfg, policy, tmp_path, "roll")
    n, w = roll.num_rows, roll.column("window_size")[0].as_py()
    assert w == 3  # floor(3 × 0.5) = 1 step per trajectory
    mask = trained_step_mask(cfg.seed, 0, 0, np.arange(n), w, 0.5)  # [N, W]
    assert (mask.sum(axis=1) == 1).all()
    sign = np.where(np.arange(n)[:, None] % 2 == 0, 1.0, -1.0)  # [N, 1]
    start = {k: v.clone() for k, v in lora_state_dict(policy.transformer).items()}

    def train(c: Any, adv: np.ndarray, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        for k, p in lora_parameters(policy.transformer).items():
            p.data.copy_(start[k])
        (tmp_path / name).mkdir()
        data = update.load_update_data(str(tmp_path / "roll"), _annotations(roll, tmp_path / name, adv))
        optimizer, ema, state = initial_state(c, policy)
        (row,) = update.train_iteration(policy, c, data, optimizer, ema, state, iteration=0)
        return row, lora_state_dict(policy.transformer)

    # advantages only where a trajectory does not train: nothing to learn from
    off, _ = train(cfg, np.where(mask, 0.0, sign), "off")
    assert off["samples"] == n and off["grad_norm"] == 0.0
    # advantages only on the trained steps: k = 1 of W = 3 transitions per trajectory, so the mean
    # over trained transitions has 3× the gradient of the full-window mean (zero advantage elsewhere)
    on_adv = np.where(mask, 1.0, 0.0) * sign
    on, weights = train(cfg, on_adv, "on")
    full_cfg = cfg.model_copy(update={"update": cfg.update.model_copy(update={"timestep_fraction": 1.0})})
    full, _ = train(full_cfg, on_adv, "full")
    assert on["samples"] == n and full["samples"] == n * w
    assert on["grad_norm"] > 0
    assert on["grad_norm"] == pytest.approx(w * full["grad_norm"], rel=1e-4)
    # per step: the transitions trained there, and the statistics over them
    np.testing.assert_allclose(
        on["adv_nonzero_by_step"], [1.0 if mask[:, j].any() else 0.0 for j in range(w)]
    )
    # the same weights and data train the same subset again: bit-identical (a resume)
    again, weights_again = train(cfg, on_adv, "again")
    assert again["grad_norm"] == on["grad_norm"]
    for k in weights:
        assert torch.equal(weights[k], weights_again[k])
