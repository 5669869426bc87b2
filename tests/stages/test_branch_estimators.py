"""Branch stage with each `branch.estimator` (issue 18) on the tiny random SD3 pipeline: rows,
evaluation counts, x̂0 from the rollout's own velocity, coarse = exact where few steps remain,
prefix rows, and the run-time K ≤ W check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tpgrpo.algorithm.estimators import branch_evals, parse_estimator, x0_estimate
from tpgrpo.errors import ConfigError
from tpgrpo.schemas.tensors import decode_tensor_column
from tpgrpo.stages import branch
from tpgrpo.stages.common import make_grid
from tpgrpo.storage import finalize_dataset, read_table

from .test_rollout import _run

ESTIMATORS = [
    {"branch__estimator": "coarse"},
    {"branch__estimator": "coarse", "branch__coarse_steps": 3},
    {"branch__estimator": "x0"},
    {"branch__estimator": "prefix:2"},
]


def _window(cfg: Any, policy: Any) -> tuple[int, int]:
    w = make_grid(cfg, policy.pipeline.scheduler.config.shift).window
    return w.start, w.size


@pytest.mark.parametrize("overrides", ESTIMATORS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_stage_rows_and_counts(make_cfg: Any, policy: Any, tmp_path: Path, overrides: dict[str, Any]) -> None:
    """Every estimator writes one row per boundary j = 0 … W with its evaluation count; prefix:K
    rows j ≥ K carry the final image byte for byte, like j = W."""
    cfg = make_cfg(sampling__num_steps=6, **overrides)
    roll = _run(cfg, policy, tmp_path, "roll")
    out = str(tmp_path / "branches")
    stats = branch.run_shard(cfg, policy, iteration=0, rollouts_uri=str(tmp_path / "roll"), output=out)
    finalize_dataset(out, "branches", inputs={}, config_hash="t", model_evals=int(stats["model_evals"]))
    w0, w = _window(cfg, policy)
    assert w >= 3
    t = read_table(out, "branches").sort_by([("trajectory_id", "ascending"), ("boundary", "ascending")])
    assert t.num_rows == roll.num_rows * (w + 1)
    est = parse_estimator(cfg.branch.estimator, cfg.branch.coarse_steps)
    per_traj = [branch_evals(est, j, w0 + j, 6, True) for j in range(w)] + [0]
    assert t.column("model_evals").to_pylist() == per_traj * roll.num_rows
    assert stats["model_evals"] == sum(per_traj) * roll.num_rows
    final = dict(zip(roll.column("trajectory_id").to_pylist(), roll.column("image").to_pylist(), strict=True))
    boundary = np.array(t.column("boundary").to_pylist())
    images, tids = t.column("image").to_pylist(), t.column("trajectory_id").to_pylist()
    copies = [images[i] == final[tids[i]] for i in range(t.num_rows)]
    if est.kind == "prefix":
        assert all(c for c, j in zip(copies, boundary, strict=True) if j >= est.prefix)
    assert all(c for c, j in zip(copies, boundary, strict=True) if j == w)


def test_x0_is_one_step_from_the_rollout_velocity(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """x0 with reuse: x̂0 = s_k − σ_k·v_k with v_k from the stored ODE-step state, no evaluation.
    coarse with one step and no reuse evaluates v at s_k afresh: the same latents (up to the
    batch's float noise) — one Euler step from σ_k to 0 is x̂0."""
    cfg = make_cfg(branch__estimator="x0")
    roll = _run(cfg, policy, tmp_path, "roll")
    x0 = branch.complete_branches(policy, cfg, roll)
    assert x0.model_evals == 0 and x0.model_calls == 0
    states = decode_tensor_column(roll, "states")  # [N, T+1, C, h, w]
    odes = decode_tensor_column(roll, "ode_states")  # [N, W, C, h, w]
    sigmas = make_grid(cfg, policy.pipeline.scheduler.config.shift).sigmas
    for i, b in enumerate(x0.branches):
        if i not in x0.latent_row:
            continue
        k, s = b.grid_index, states[b.trajectory_id, b.grid_index]
        v = (odes[b.trajectory_id, b.boundary] - s) / (sigmas[k + 1] - sigmas[k])
        expected = x0_estimate(s[None], v[None], float(sigmas[k]))[0]  # [C, h, w]
        torch.testing.assert_close(x0.latents[x0.latent_row[i]], expected)
    fresh = branch.complete_branches(
        policy,
        make_cfg(branch__estimator="coarse", branch__coarse_steps=1, branch__reuse_rollout_velocity=False),
        roll,
    )
    assert fresh.model_evals == len(fresh.latent_row)  # one evaluation per branch
    torch.testing.assert_close(fresh.latents, x0.latents, rtol=1e-4, atol=1e-4)


def test_coarse_equals_exact_where_few_steps_remain(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """coarse:3 from a boundary with ≤ 3 grid steps left takes all of them: the exact completion."""
    cfg = make_cfg(sampling__num_steps=6)
    roll = _run(cfg, policy, tmp_path, "roll")
    exact = branch.complete_branches(policy, cfg, roll)
    coarse = branch.complete_branches(
        policy, make_cfg(sampling__num_steps=6, branch__estimator="coarse", branch__coarse_steps=3), roll
    )
    late = [i for i, b in enumerate(exact.branches) if i in exact.latent_row and 6 - b.grid_index <= 3]
    assert late
    for i in late:
        torch.testing.assert_close(
            coarse.latents[coarse.latent_row[i]], exact.latents[exact.latent_row[i]], rtol=1e-4, atol=1e-4
        )
    early = [i for i, b in enumerate(exact.branches) if i in exact.latent_row and 6 - b.grid_index > 3]
    assert coarse.model_evals < exact.model_evals and early


def test_prefix_larger_than_the_window_is_refused(make_cfg: Any, policy: Any, tmp_path: Path) -> None:
    """The default window is known only on the model's grid: the stage checks K ≤ W before work."""
    cfg = make_cfg(sampling__num_steps=6)
    roll = _run(cfg, policy, tmp_path, "roll")
    _, w = _window(cfg, policy)
    if w >= 5:
        pytest.skip("the window covers every allowed K here")
    with pytest.raises(ConfigError, match="needs K ≤ W"):
        branch.complete_branches(policy, make_cfg(sampling__num_steps=6, branch__estimator="prefix:5"), roll)
