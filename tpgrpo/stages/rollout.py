"""Stage 1, rollout: G trajectories per prompt under the current policy, every state recorded.

For each trajectory (SPEC §3): initial noise `s_0` from its own seed (or, with
`rollout.same_noise_per_group`, the `s_0` of its group's first trajectory); `T` steps on the grid, the
window steps `k ∈ [w0, w0 + W)` drawn with the stochastic sampler (its log-prob recorded), the
others ODE steps; all states `s_0 … s_T`; for each window step also the ODE-step state
`s_k + (σ_{k+1} − σ_k)·v_k`, so the branch stage starts each completion one step further for free;
the final image. Trajectories are processed in chunks of the model's best batch size; the CFG
velocity of a chunk is one batched forward.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tpgrpo.algorithm import ode_step, sampler_step
from tpgrpo.config import Config
from tpgrpo.schemas.images import encode_png
from tpgrpo.schemas.tensors import encode_tensor
from tpgrpo.stages.batching import best_batch
from tpgrpo.stages.common import (
    Grid,
    chunks,
    encode_prompts,
    forward_samples,
    make_grid,
    select_prompt_rows,
    shard_groups,
    trajectory_noise,
    trajectory_seed,
    uses_uncond,
)
from tpgrpo.stages.progress import progress_bar
from tpgrpo.storage import DatasetWriter, read_table

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


@dataclass(frozen=True)
class Trajectory:
    """What identifies one trajectory of an iteration."""

    trajectory_id: int
    group_id: int
    batch: int
    prompt_id: str
    prompt: str
    seed: int
    noise_seed: int | None = None
    """Seed of the initial noise `s_0` when it is not the trajectory's own (`rollout.same_noise_per_group`:
    the seed of the group's first trajectory, so the whole group starts from its `s_0`)."""


def plan_trajectories(prompts: Any, cfg: Config, iteration: int) -> list[Trajectory]:
    """Every trajectory of `iteration`: groups of `G` per selected prompt, ids in group order.

    Args:
        prompts (`pa.Table`): the run's prompts dataset (`prompt_id`, `prompt`).
    """
    rows = select_prompt_rows(prompts.num_rows, cfg, iteration)
    ids = prompts.column("prompt_id").to_pylist()
    texts = prompts.column("prompt").to_pylist()
    g = cfg.rollout.group_size
    out = []
    for group_id, row in enumerate(rows.tolist()):
        # DanceGRPO's init_same_noise: every member starts from the group's first member's s_0 (the
        # step noise stays each trajectory's own)
        first = trajectory_seed(cfg.seed, iteration, group_id * g)
        for member in range(g):
            tid = group_id * g + member
            seed = trajectory_seed(cfg.seed, iteration, tid)
            out.append(
                Trajectory(
                    trajectory_id=tid,
                    group_id=group_id,
                    batch=group_id // cfg.rollout.prompts_per_batch,
                    prompt_id=ids[row],
                    prompt=texts[row],
                    seed=seed,
                    noise_seed=first if cfg.rollout.same_noise_per_group and first != seed else None,
                )
            )
    return out


def initial_noise(t: Trajectory, shape: tuple[int, int, int], window_size: int) -> tuple[Any, Any]:
    """`s_0` `[C, h, w]` and the window's step noise `[W, C, h, w]` of trajectory `t`: both from its
    seed, or `s_0` from `t.noise_seed` (the group's first trajectory's `s_0`, drawn the same way)."""
    s0, eps = trajectory_noise(t.seed, shape, window_size)
    if t.noise_seed is not None:
        s0 = trajectory_noise(t.noise_seed, shape, 0)[0]  # [C, h, w]
    return s0, eps


@torch.no_grad()
def sample_trajectories(
    policy: Policy, cfg: Config, grid: Grid, trajectories: list[Trajectory]
) -> dict[str, Any]:
    """Sample one chunk of trajectories (one batched forward per grid step).

    Returns:
        dict with `states` `[B, T+1, C, h, w]`, `ode_states` `[B, W, C, h, w]`, `log_probs` `[B, W]`,
        `images` uint8 `[B, H, W, 3]` (all on the CPU, float32).
    """
    shape = policy.latent_shape(cfg.model.height, cfg.model.width)
    window = grid.window
    noise = [initial_noise(t, shape, window.size) for t in trajectories]
    x = torch.stack([s0 for s0, _ in noise]).to(policy.device)  # [B, C, h, w]
    eps = torch.stack([e for _, e in noise]).to(policy.device)  # [B, W, C, h, w]
    cond = encode_prompts(policy, [t.prompt for t in trajectories])
    uncond = (
        encode_prompts(policy, [""] * len(trajectories))
        if uses_uncond(policy, cfg.sampling.guidance_scale)
        else None
    )
    states, ode_states, log_probs = [x], [], []
    b = x.shape[0]
    for k in range(grid.num_steps):
        sigma, sigma_next = grid.sigmas[k].item(), grid.sigmas[k + 1].item()
        sig = torch.full((b,), sigma, device=policy.device)  # [B]
        v = policy.velocity(x, sig, cond, uncond, cfg.sampling.guidance_scale)  # [B, C, h, w] float32
        if k in window.steps:
            j = k - window.start
            out = sampler_step(
                cfg.sampling.sampler,
                x,
                v,
                sigma,
                sigma_next,
                noise_level=cfg.sampling.noise_level,
                sigma_guard=grid.sigma_guard,
                noise=eps[:, j],
                exact_cps_logprob=cfg.sampling.exact_cps_logprob,
            )
            ode_states.append(ode_step(x, v, sigma, sigma_next))  # [B, C, h, w]
            assert out.log_prob is not None  # window steps have noise_level > 0 (config-validated)
            log_probs.append(out.log_prob)
            x = out.next
        else:
            x = ode_step(x, v, sigma, sigma_next)
        states.append(x)
    images = policy.decode(x)  # [B, H, W, 3] uint8
    return {
        "states": torch.stack(states, dim=1).float().cpu(),  # [B, T+1, C, h, w]
        "ode_states": torch.stack(ode_states, dim=1).float().cpu(),  # [B, W, C, h, w]
        "log_probs": torch.stack(log_probs, dim=1).float().cpu(),  # [B, W]
        "images": images,
    }


def run_shard(
    cfg: Config,
    policy: Policy,
    *,
    run_id: str,
    iteration: int,
    prompts_uri: str,
    output: str,
    shard: int = 0,
    num_shards: int = 1,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Sample this shard's prompt groups and write them as part files of `output`.

    Returns:
        stats: `trajectories`, `model_evals` (velocity evaluations), `forward_samples` (transformer
        samples, ×2 where guidance doubles the batch: SD3 with CFG), `chunk`, `seconds`.
    """
    started = time.perf_counter()
    prompts = read_table(
        prompts_uri, "prompts", columns=["prompt_id", "prompt"], storage_options=storage_options
    )
    plan = plan_trajectories(prompts, cfg, iteration)
    mine = set(shard_groups(cfg.rollout.groups, shard, num_shards))
    todo = [t for t in plan if t.group_id in mine]
    grid = make_grid(cfg, policy)
    shape = policy.latent_shape(cfg.model.height, cfg.model.width)
    cfg_on = uses_uncond(policy, cfg.sampling.guidance_scale)
    probe = policy.encode([todo[0].prompt]) if todo else None
    chunk = (
        best_batch(
            policy,
            shape,
            probe,
            policy.encode([""]) if cfg_on else None,
            cfg.sampling.guidance_scale,
            cfg.branch.chunk_size,
            limit=len(todo),
        )
        if probe is not None
        else 1
    )
    evals = 0
    with DatasetWriter(output, "rollouts", shard=shard, storage_options=storage_options) as writer:
        bar = progress_bar(total=len(todo), desc=f"rollout it{iteration} shard{shard}", unit="traj")
        for idx in chunks(list(range(len(todo))), chunk):
            part = [todo[i] for i in idx]
            out = sample_trajectories(policy, cfg, grid, part)
            evals += len(part) * grid.num_steps
            writer.write(trajectory_rows(part, out, run_id=run_id, iteration=iteration, cfg=cfg, grid=grid))
            bar.update(len(part))
        bar.close()
    return {
        "trajectories": float(len(todo)),
        "model_evals": float(evals),
        "forward_samples": forward_samples(policy, evals, cfg.sampling.guidance_scale),
        "chunk": float(chunk),
        "seconds": time.perf_counter() - started,
    }


_COLUMNS = (
    "run_id",
    "iteration",
    "batch",
    "trajectory_id",
    "prompt_id",
    "group_id",
    "prompt",
    "seed",
    "num_steps",
    "window_start",
    "window_size",
    "sampler",
    "noise_level",
    "guidance_scale",
    "sigmas",
    "states",
    "states_dtype",
    "states_shape",
    "ode_states",
    "ode_states_dtype",
    "ode_states_shape",
    "log_probs",
    "image",
)


def trajectory_rows(
    part: list[Trajectory], out: dict[str, Any], *, run_id: str, iteration: int, cfg: Config, grid: Grid
) -> dict[str, list[Any]]:
    """The `rollouts` columns of sampled trajectories.

    Args:
        part (`list[Trajectory]`): the trajectories, in the order `sample_trajectories` saw them.
        out (`dict`): its result: `states` `[B, T+1, C, h, w]`, `ode_states` `[B, W, C, h, w]`,
            `log_probs` `[B, W]`, `images` (uint8 `[B, H, W, 3]`).
    """
    rows: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
    sigmas = grid.sigmas.tolist()
    for n, t in enumerate(part):
        states, s_dtype, s_shape = encode_tensor(out["states"][n])
        odes, o_dtype, o_shape = encode_tensor(out["ode_states"][n])
        rows["run_id"].append(run_id)
        rows["iteration"].append(iteration)
        rows["batch"].append(t.batch)
        rows["trajectory_id"].append(t.trajectory_id)
        rows["prompt_id"].append(t.prompt_id)
        rows["group_id"].append(t.group_id)
        rows["prompt"].append(t.prompt)
        rows["seed"].append(t.seed)
        rows["num_steps"].append(grid.num_steps)
        rows["window_start"].append(grid.window.start)
        rows["window_size"].append(grid.window.size)
        rows["sampler"].append(cfg.sampling.sampler)
        rows["noise_level"].append(cfg.sampling.noise_level)
        rows["guidance_scale"].append(cfg.sampling.guidance_scale)
        rows["sigmas"].append(sigmas)
        rows["states"].append(states)
        rows["states_dtype"].append(s_dtype)
        rows["states_shape"].append(s_shape)
        rows["ode_states"].append(odes)
        rows["ode_states_dtype"].append(o_dtype)
        rows["ode_states_shape"].append(o_shape)
        rows["log_probs"].append(out["log_probs"][n].tolist())
        rows["image"].append(encode_png(out["images"][n]))
    return rows


def summary(table: Any) -> dict[str, float]:
    """Summary metrics of a rollouts table for the manifest (mean log-prob)."""
    lp = np.concatenate([np.asarray(x, dtype=np.float64) for x in table.column("log_probs").to_pylist()])
    return {"log_prob_mean": float(lp.mean()) if lp.size else 0.0}
