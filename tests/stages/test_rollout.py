"""Rollout stage: groups, seeds, recorded states and log-probs, independence from chunking/sharding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tpgrpo.algorithm import ode_step, sampler_step
from tpgrpo.schemas.images import decode_png
from tpgrpo.schemas.tensors import decode_tensor_column
from tpgrpo.stages import rollout
from tpgrpo.stages.common import make_grid, trajectory_seed
from tpgrpo.stages.prompts import read_prompt_source
from tpgrpo.storage import finalize_dataset, read_table, write_dataset


def _prompts(tmp: Path) -> str:
    uri = str(tmp / "prompts")
    rows = read_prompt_source("train")
    cols = {k: [r[k] for r in rows] for k in ("prompt_id", "prompt", "task", "spec", "split")}
    write_dataset(uri, "prompts", cols, inputs={}, config_hash="t")
    return uri


def _run(cfg: Any, policy: Any, tmp: Path, name: str, shards: int = 1) -> Any:
    prompts = _prompts(tmp) if not (tmp / "prompts").exists() else str(tmp / "prompts")
    out = str(tmp / name)
    for s in range(shards):
        rollout.run_shard(
            cfg, policy, run_id="r", iteration=0, prompts_uri=prompts, output=out, shard=s, num_shards=shards
        )
    finalize_dataset(out, "rollouts", inputs={}, config_hash="t", shards=shards)
    return read_table(out, "rollouts").sort_by("trajectory_id")


def test_groups_seeds_and_shapes(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    cfg = make_cfg()
    table = _run(cfg, policy, tmp_path, "a")
    g, groups = cfg.rollout.group_size, cfg.rollout.prompts_per_batch
    assert table.num_rows == g * groups
    # G trajectories per prompt group, same prompt within a group
    assert table.column("trajectory_id").to_pylist() == list(range(g * groups))
    assert table.column("group_id").to_pylist() == [t // g for t in range(g * groups)]
    for grp in range(groups):
        assert len(set(table.column("prompt").to_pylist()[grp * g : (grp + 1) * g])) == 1
    assert table.column("seed").to_pylist() == [trajectory_seed(cfg.seed, 0, t) for t in range(g * groups)]
    states = decode_tensor_column(table, "states")  # [N, T+1, C, h, w]
    t_steps = cfg.sampling.num_steps
    assert states.shape == (g * groups, t_steps + 1, 4, 8, 8)
    # the SPEC §2 window on the tiny pipeline's shift-3 grid at T = 5: 1, .90, .75, .50, .0089, 0,
    # cps stds .80, .67, .45, .008 → W = 3 (step 3 is under the floor)
    w = make_grid(cfg, policy.pipeline.scheduler.config.shift).window.size
    assert w == 3 and set(table.column("window_size").to_pylist()) == {3}
    assert all(len(lp) == w for lp in table.column("log_probs").to_pylist())
    assert decode_png(table.column("image")[0].as_py()).shape == (32, 32, 3)
    # s_0 is the trajectory's own seeded noise
    s0 = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(table.column("seed")[1].as_py()))
    torch.testing.assert_close(states[1, 0], s0, rtol=0, atol=0)


def test_independent_of_chunking_and_sharding(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    a = _run(make_cfg(branch__chunk_size=2), policy, tmp_path, "a")
    b = _run(make_cfg(branch__chunk_size=5), policy, tmp_path, "b", shards=2)
    assert a.column("seed").to_pylist() == b.column("seed").to_pylist()
    torch.testing.assert_close(
        decode_tensor_column(a, "states"), decode_tensor_column(b, "states"), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.array(a.column("log_probs").to_pylist()), np.array(b.column("log_probs").to_pylist()), atol=1e-5
    )
    # shards wrote distinct part files
    parts = sorted(p.name for p in (tmp_path / "b").glob("part-*.parquet"))
    assert {p.split("-")[1] for p in parts} == {"00000", "00001"}


def test_stored_transitions_recompute_exactly(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """Recomputing each window step's log-prob from the stored states gives the stored value
    (ratio 1 for the update), and steps outside the window are plain ODE steps."""
    cfg = make_cfg(sampling__window_start=1, sampling__window_size=2)
    table = _run(cfg, policy, tmp_path, "a")
    states = decode_tensor_column(table, "states")  # [N, T+1, C, h, w]
    stored = torch.tensor(table.column("log_probs").to_pylist())  # [N, W]
    grid = make_grid(cfg, policy.pipeline.scheduler.config.shift)
    cond = policy.encode(table.column("prompt").to_pylist())
    uncond = policy.encode([""] * table.num_rows)
    n = table.num_rows
    with torch.no_grad():
        for k in range(cfg.sampling.num_steps):
            s, s1 = float(grid.sigmas[k]), float(grid.sigmas[k + 1])
            v = policy.velocity(states[:, k], torch.full((n,), s), cond, uncond, cfg.sampling.guidance_scale)
            if k in grid.window.steps:
                out = sampler_step(
                    "cps",
                    states[:, k],
                    v,
                    s,
                    s1,
                    noise_level=0.7,
                    sigma_guard=grid.sigma_guard,
                    prev_sample=states[:, k + 1],
                )
                torch.testing.assert_close(out.log_prob, stored[:, k - 1], rtol=0, atol=1e-5)
            else:
                torch.testing.assert_close(
                    ode_step(states[:, k], v, s, s1), states[:, k + 1], rtol=0, atol=1e-5
                )
    odes = decode_tensor_column(table, "ode_states")  # [N, W, C, h, w]
    assert odes.shape[1] == 2
    for j, k in enumerate(grid.window.steps):
        s, s1 = float(grid.sigmas[k]), float(grid.sigmas[k + 1])
        with torch.no_grad():
            v = policy.velocity(states[:, k], torch.full((n,), s), cond, uncond, cfg.sampling.guidance_scale)
        torch.testing.assert_close(odes[:, j], ode_step(states[:, k], v, s, s1), rtol=0, atol=1e-5)
    # plain pyarrow reads it without this package
    assert pq.read_table(str(tmp_path / "a")).num_rows == n


def test_window_under_the_floor_refused_before_any_write(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """An explicit window holding a near-deterministic step fails on the model's actual grid (SPEC §2),
    with the step, its std and the fix, and nothing is written."""
    from tpgrpo.errors import ConfigError

    cfg = make_cfg(sampling__window_size=4)  # T = 5: step 3 (σ .50 → .0089) has cps std .008
    with pytest.raises(ConfigError, match=r"step 3 .*std 0\.0080.*W = 3") as err:
        make_grid(cfg, policy.pipeline.scheduler.config.shift)
    assert "window_size to null" in str(err.value)
    with pytest.raises(ConfigError, match="step 3"):
        _run(cfg, policy, tmp_path, "bad")
    assert not list((tmp_path / "bad").glob("*.parquet"))


def test_same_noise_per_group_with_the_dance_sampler(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """`rollout.same_noise_per_group`: a group shares its first trajectory's `s_0`, the step noise stays
    each trajectory's own; the stored dance transitions recompute to their stored log-probs."""
    cfg = make_cfg(rollout__same_noise_per_group=True, sampling__sampler="dance", sampling__noise_level=0.5)
    table = _run(cfg, policy, tmp_path, "a")
    states = decode_tensor_column(table, "states")  # [N, T+1, C, h, w]
    g, n = cfg.rollout.group_size, table.num_rows
    # the seed column is still each trajectory's own (its step noise)
    assert table.column("seed").to_pylist() == [trajectory_seed(cfg.seed, 0, t) for t in range(n)]
    assert set(table.column("sampler").to_pylist()) == {"dance"}
    for t in range(n):
        first = (t // g) * g  # the group's first trajectory: its own seed's s_0
        s0 = torch.randn(
            (4, 8, 8), generator=torch.Generator().manual_seed(trajectory_seed(cfg.seed, 0, first))
        )
        torch.testing.assert_close(states[t, 0], s0, rtol=0, atol=0)
    assert not torch.equal(states[0, 0], states[g, 0])  # groups differ
    assert not torch.equal(states[0, 1], states[1, 1])  # the first (stochastic) step differs in a group
    # the dance window on the shift-3 grid at T = 5 (1, .90, .75, .50, .0089, 0): stds .5·sqrt(Δσ) =
    # .16, .19, .25, .35 — all above the floor but the last step, never trained: W = 4
    grid = make_grid(cfg, policy.pipeline.scheduler.config.shift)
    assert grid.window.size == 4
    stored = torch.tensor(table.column("log_probs").to_pylist())  # [N, W]
    cond = policy.encode(table.column("prompt").to_pylist())
    uncond = policy.encode([""] * n)
    with torch.no_grad():
        for k in grid.window.steps:
            s, s1 = float(grid.sigmas[k]), float(grid.sigmas[k + 1])
            v = policy.velocity(states[:, k], torch.full((n,), s), cond, uncond, cfg.sampling.guidance_scale)
            out = sampler_step(
                "dance",
                states[:, k],
                v,
                s,
                s1,
                noise_level=0.5,
                sigma_guard=grid.sigma_guard,
                prev_sample=states[:, k + 1],
            )
            torch.testing.assert_close(out.log_prob, stored[:, k], rtol=0, atol=1e-5)
    # the default leaves every trajectory its own s_0 (same states as before this option existed)
    plain = _run(make_cfg(sampling__sampler="dance", sampling__noise_level=0.5), policy, tmp_path, "b")
    s_plain = decode_tensor_column(plain, "states")
    torch.testing.assert_close(s_plain[0], states[0], rtol=0, atol=1e-6)  # a group's first: unchanged
    assert not torch.equal(s_plain[1, 0], states[1, 0])
