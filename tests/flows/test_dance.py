"""DanceGRPO's options through the real stages on the tiny pipeline: the dance sampler, one initial
noise per group, a seeded subset of steps, no completions, a weighted reward aggregated by advantage,
best-of-n; the run verifies, audits (which steps were trained) and redoes its update bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tpgrpo.algorithm import aggregate_advantages, best_of_n_mask, trained_step_mask
from tpgrpo.config import load_config_data
from tpgrpo.schemas.tensors import decode_tensor_column
from tpgrpo.storage import read_table
from tpgrpo.storage.blobs import read_blobs

from .conftest import one_torch_thread, small_config

pytestmark = pytest.mark.integration

WEIGHTED = {
    "name": "weighted",
    "components": [{"spec": "jpeg_incompressibility", "weight": 1.0}, {"spec": "jpeg", "weight": 0.25}],
}


def test_a_dancegrpo_iteration(flow_pipeline: Path, prefect_env: dict[str, str], tmp_path: Path) -> None:
    from tpgrpo.pipeline import steps
    from tpgrpo.report.trajectory import format_trajectory, load_trajectory
    from tpgrpo.report.verify import verify_run

    extra = {
        "sampling.sampler": "dance",
        "sampling.noise_level": 0.5,
        "rollout.same_noise_per_group": True,
        "branch.completions": False,
        "reward.mode": "flow_grpo",
        "reward.spec": WEIGHTED,
        "advantage.aggregate": "advantage",
        "advantage.best_of_n": 2,
        "update.timestep_fraction": 0.5,
        "update.kl_beta": 0.0,
        "iterations": 1,
    }
    cfg = load_config_data(small_config(flow_pipeline, tmp_path / "runs", **extra))
    ctx = steps.RunContext.create(cfg, "dance")
    with one_torch_thread():
        steps.init_run(ctx)
        for stage in steps.STAGES:
            steps.run_stage(ctx, stage, 0)
    layout, key = ctx.layout, ctx.reward_key()
    g = cfg.rollout.group_size  # 3

    roll = read_table(layout.rollouts(0), "rollouts").sort_by("trajectory_id")
    states = decode_tensor_column(roll, "states")  # [N, T+1, C, h, w]
    n, w = roll.num_rows, int(roll.column("window_size")[0].as_py())
    assert set(roll.column("sampler").to_pylist()) == {"dance"} and w >= 2
    for t in range(n):  # one initial noise per group
        assert torch.equal(states[t, 0], states[(t // g) * g, 0])
    assert not torch.equal(states[0, 1], states[1, 1])

    # the advantage: each component normalised in its group, summed with its weight; best-of-2 keeps
    # the best and the worst trajectory of each group (by aggregated final advantage)
    rewards = read_table(layout.rewards(0, key), "rewards").sort_by("trajectory_id")
    assert rewards.column("boundary").to_pylist() == [w] * n  # no completions: final images only
    parts = [json.loads(d)["components"] for d in rewards.column("details").to_pylist()]
    comps = {k: np.array([p[k]["score"] for p in parts]) for k in parts[0]}
    weights = {k: parts[0][k]["weight"] for k in parts[0]}
    groups = roll.column("group_id").to_numpy()
    expected = aggregate_advantages(
        [np.repeat(c[:, None], w, axis=1) for c in comps.values()], list(weights.values()), groups
    )  # [N, W]
    final = expected[:, 0]  # the aggregated final advantage (unclipped values are within the clip here)
    keep = best_of_n_mask(final, groups, 2, roll.column("trajectory_id").to_numpy())
    expected[~keep] = 0.0
    ann = read_table(layout.annotations(0, key, "flow_grpo"), "annotations").sort_by(
        [("trajectory_id", "ascending"), ("step", "ascending")]
    )
    np.testing.assert_allclose(np.reshape(ann.column("advantage").to_numpy(), (n, w)), expected, atol=1e-12)
    assert (np.reshape(ann.column("advantage").to_numpy(), (n, w)) == 0).all(axis=1).sum() >= n // g

    # the update trained floor(W/2) steps of each kept trajectory
    updates = read_table(layout.updates(0), "updates")
    kept = int((np.abs(expected).sum(axis=1) > 0).sum())
    assert sum(updates.column("samples").to_pylist()) == kept * (w // 2)

    # it verifies, and the audit lists the trained steps the update derived
    report = verify_run(ctx)
    assert report.ok, report.faults
    t = int(np.flatnonzero(keep)[0])
    audit = load_trajectory(ctx, 0, t, key, "flow_grpo")
    mask = trained_step_mask(cfg.seed, 0, 0, np.array([t]), w, 0.5)[0]
    assert audit.trained == [np.flatnonzero(mask).tolist()]
    text = format_trajectory(audit)
    assert f"trained steps: epoch 0 {np.flatnonzero(mask).tolist()} (update.timestep_fraction 0.5" in text
    assert text.splitlines()[-1].endswith("trajectory)")  # the update read this annotation

    # redoing the update from the same inputs gives the same adapter, bit for bit (a resume)
    before = read_blobs(layout.checkpoint(1))[1]
    with one_torch_thread():
        steps.run_stage(ctx, "update", 0, force=True)
    after = read_blobs(layout.checkpoint(1))[1]
    assert before.keys() == after.keys() and all(before[k] == after[k] for k in before)

    # the report of a run without completions draws no branch strips, and says why
    from tpgrpo.report.build import build_report

    files = build_report(ctx, tmp_path / "report")
    assert "Trained without completions" in files.html.read_text()
    assert not any(p.name.startswith("strips_") for p in files.images)
