"""Branch stage: batched ODE completions equal per-branch ones, C(s_0) from the trajectory's own
noise, the final image reused, evaluation counts at their floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tpgrpo.algorithm import ode_step
from tpgrpo.schemas.tensors import decode_tensor_column
from tpgrpo.stages import branch
from tpgrpo.stages.common import make_grid
from tpgrpo.storage import finalize_dataset, read_table

from .test_rollout import _run


def _naive_completion(policy: Any, cfg: Any, state: torch.Tensor, start: int, prompt: str) -> torch.Tensor:
    """One branch alone: ODE steps from grid index `start` to the end."""
    grid = make_grid(cfg, policy.pipeline.scheduler.config.shift)
    x = state[None]
    cond, uncond = policy.encode([prompt]), policy.encode([""])
    with torch.no_grad():
        for g in range(start, cfg.sampling.num_steps):
            s, s1 = float(grid.sigmas[g]), float(grid.sigmas[g + 1])
            v = policy.velocity(x, torch.tensor([s]), cond, uncond, cfg.sampling.guidance_scale)
            x = ode_step(x, v, s, s1)
    return x[0]


@pytest.mark.parametrize("reuse", [True, False])
def test_batched_equals_naive(make_cfg: Any, policy: Any, tmp_path: Path, reuse: bool) -> None:
    cfg = make_cfg(branch__reuse_rollout_velocity=reuse, branch__chunk_size=3)
    roll = _run(cfg, policy, tmp_path, "roll")
    result = branch.complete_branches(policy, cfg, roll)
    states = decode_tensor_column(roll, "states")  # [N, T+1, C, h, w]
    prompts = roll.column("prompt").to_pylist()
    window = make_grid(cfg, policy.pipeline.scheduler.config.shift).window
    t_steps, w0, w = cfg.sampling.num_steps, window.start, window.size
    assert len(result.branches) == roll.num_rows * (w + 1)
    for i, b in enumerate(result.branches):
        assert b.grid_index == w0 + b.boundary
        if b.boundary == w:  # the trajectory's own final state: nothing to compute
            assert b.model_evals == 0 and i not in result.latent_row
            continue
        # every branch starts from the stored state s_k (the ODE-step reuse starts one step later
        # from a state the rollout computed with the same velocity)
        expected = _naive_completion(
            policy, cfg, states[b.trajectory_id, b.grid_index], b.grid_index, prompts[b.trajectory_id]
        )
        torch.testing.assert_close(result.latents[result.latent_row[i]], expected, rtol=1e-4, atol=1e-4)
        assert b.model_evals == t_steps - b.grid_index - (1 if reuse else 0)


def test_counts_and_first_boundary(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """T = 10, the SPEC §2 window W = 8 (shift-3 grid): boundaries j = 0 … 7 need a completion from
    grid index k = j, T − k = 10 + 9 + … + 3 = 52 evaluations per trajectory (44 with velocity
    reuse, one less each); C(s_8) is the final image. Model calls about T per level batch, never one
    per branch and step; C(s_0) is the pure ODE sample of s_0."""
    cfg = make_cfg(sampling__num_steps=10, branch__chunk_size=64)
    roll = _run(cfg, policy, tmp_path, "roll")
    n = roll.num_rows
    reuse = branch.complete_branches(policy, cfg, roll)
    assert make_grid(cfg, policy.pipeline.scheduler.config.shift).window.size == 8
    assert reuse.model_evals == 44 * n
    assert reuse.model_calls == 9  # levels 1 … 9, every active branch in one chunk
    plain = branch.complete_branches(
        policy,
        make_cfg(sampling__num_steps=10, branch__chunk_size=64, branch__reuse_rollout_velocity=False),
        roll,
    )
    assert plain.model_evals == 52 * n
    assert plain.model_calls == 10
    # C(s_0): from the trajectory's own initial noise
    states = decode_tensor_column(roll, "states")
    first = [i for i, b in enumerate(reuse.branches) if b.boundary == 0]
    pure = torch.stack(
        [_naive_completion(policy, cfg, states[t, 0], 0, roll.column("prompt")[t].as_py()) for t in range(n)]
    )
    torch.testing.assert_close(
        torch.stack([reuse.latents[reuse.latent_row[i]] for i in first]), pure, rtol=1e-4, atol=1e-4
    )


def test_stage_writes_all_boundaries(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    cfg = make_cfg()
    roll = _run(cfg, policy, tmp_path, "roll")
    out = str(tmp_path / "branches")
    stats = branch.run_shard(cfg, policy, iteration=0, rollouts_uri=str(tmp_path / "roll"), output=out)
    manifest = finalize_dataset(
        out, "branches", inputs={}, config_hash="t", model_evals=int(stats["model_evals"])
    )
    w = make_grid(cfg, policy.pipeline.scheduler.config.shift).window.size
    t = read_table(out, "branches").sort_by([("trajectory_id", "ascending"), ("boundary", "ascending")])
    assert t.num_rows == roll.num_rows * (w + 1) == manifest.rows
    assert manifest.model_evals == sum(t.column("model_evals").to_pylist())
    # the last boundary is the trajectory's own final image, byte for byte
    last = t.filter(np.array(t.column("boundary").to_pylist()) == w)
    assert last.column("image").to_pylist() == roll.column("image").to_pylist()
    assert set(last.column("model_evals").to_pylist()) == {0}


def test_without_completions_only_the_final_image(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """flow_grpo with branch.completions=false: no model evaluation, one row per trajectory."""
    cfg = make_cfg(branch__completions=False, reward__mode="flow_grpo")
    roll = _run(cfg, policy, tmp_path, "roll")
    result = branch.complete_branches(policy, cfg, roll)
    w = make_grid(cfg, policy.pipeline.scheduler.config.shift).window.size
    assert result.model_evals == 0 and result.model_calls == 0
    assert [b.boundary for b in result.branches] == [w] * roll.num_rows


def test_completions_off_needs_flow_grpo(make_cfg: Any) -> None:
    from tpgrpo.errors import ConfigError

    with pytest.raises(ConfigError, match="no intermediate rewards"):
        make_cfg(branch__completions=False, reward__mode="tp")
