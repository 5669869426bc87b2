"""Stage 2, branch: the ODE completion `C(s_k)` of every window boundary state (SPEC §3).

For trajectory boundary `j = 0 … W` at grid index `k = w0 + j`:

- `j = W`: every step after the window is an ODE step, so `C(s_{w0+W})` is the trajectory's own
  final image — reused, no model evaluation.
- `j < W`: run ODE steps from `s_k` to the end of the grid and decode. The rollout already computed
  the velocity at `s_k` and stored the ODE-step state, so (with `branch.reuse_rollout_velocity`)
  a completion starts from that state at index `k + 1`: `T − k − 1` evaluations instead of `T − k`.
  `C(s_0)` thus starts from the trajectory's own initial noise.

With `branch.completions: false` (flow_grpo only) the stage writes just the final boundary: the
cost of Flow-GRPO, which scores final images only. `branch.audit_every: K` still completes every K-th
iteration, so that one can be re-annotated into the step-level modes (an audit of what TP-GRPO would
do with the run; the flow_grpo update reads only the final rewards either way).

All branches of all trajectories live on one grid, so at grid index `g` every branch started at or
before `g` has the same σ: one batch per level, cut into chunks of the model's best batch size.
The number of model calls is about `T · ⌈active / chunk⌉`, not one call per branch and step.

`branch.estimator` (issue 18, `tpgrpo.algorithm.estimators`) trades exactness for evaluations:
`exact` (the above, the default), `coarse` (`branch.coarse_steps` Euler steps on a subset of the
grid's points; the first from the rollout's velocity with reuse), `x0` (one step to σ = 0 from the
rollout's velocity: `x̂0 = s_k − σ_k·v_k`, no evaluation with reuse), `prefix:K` (exact for
boundaries `j < K`; the later ones take the final image, so `ρ_j = ρ_W` there). Every estimator
writes the same rows: one per boundary `j = 0 … W`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc
import torch

from tpgrpo.algorithm import ode_step
from tpgrpo.algorithm.estimators import (
    coarse_path,
    euler_to,
    parse_estimator,
    prefix_problems,
    velocity_from_ode_state,
)
from tpgrpo.config import Config
from tpgrpo.errors import ConfigError
from tpgrpo.schemas.images import encode_png
from tpgrpo.schemas.tensors import decode_tensor
from tpgrpo.stages.batching import best_batch
from tpgrpo.stages.common import chunks, encode_prompts, forward_samples, shard_groups, uses_uncond
from tpgrpo.stages.progress import progress_bar
from tpgrpo.storage import DatasetWriter, read_table

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


@dataclass
class Branch:
    """One completion in flight."""

    trajectory_id: int
    boundary: int  # j
    grid_index: int  # k = w0 + j
    start: int  # grid index its ODE steps start from (k, or k + 1 when reusing the velocity)
    prompt_row: int  # row of its prompt in the encoded prompts
    model_evals: int


@dataclass
class BranchResult:
    """Completions of a set of trajectories, in (trajectory, boundary) order."""

    branches: list[Branch]
    latents: torch.Tensor  # [N, C, h, w] final latents of the branches that needed sampling
    latent_row: dict[int, int]  # branch index -> row of `latents`
    model_calls: int
    model_evals: int


@torch.no_grad()
def complete_branches(
    policy: Policy,
    cfg: Config,
    rollouts: Any,
    chunk: int | None = None,
    completions: bool | None = None,
) -> BranchResult:
    """Run every branch of `rollouts` (a table with states, ode_states, sigmas, prompt, window).

    Args:
        chunk (`int`, *optional*): samples per model call; default: the best batch (configured or
            measured).
        completions (`bool`, *optional*): complete the window states (else only the final image
            stands); default `branch.completions` (the stage passes `branch.completes(iteration)`).
    """
    complete = cfg.branch.completions if completions is None else completions
    reuse = cfg.branch.reuse_rollout_velocity
    est = parse_estimator(cfg.branch.estimator, cfg.branch.coarse_steps)
    prompts = sorted(set(rollouts.column("prompt").to_pylist()))
    prompt_row = {p: i for i, p in enumerate(prompts)}
    cond_all = encode_prompts(policy, prompts)
    uncond_one = encode_prompts(policy, [""]) if uses_uncond(policy, cfg.sampling.guidance_scale) else None

    sigmas = torch.tensor(rollouts.column("sigmas")[0].as_py(), dtype=torch.float32)  # [T+1]
    num_steps = sigmas.shape[0] - 1
    branches: list[Branch] = []
    pending: list[int] = []  # branches with j < W, whose final latent this stage computes
    starts: list[torch.Tensor] = []  # their start states, [C, h, w] each
    paths: list[list[int]] = []  # coarse/x0: grid indices each pending branch visits
    known: list[torch.Tensor | None] = []  # coarse/x0: the rollout's velocity at the start, [C, h, w]
    for r in range(rollouts.num_rows):
        row = {name: rollouts.column(name)[r].as_py() for name in _SCALARS}
        states = decode_tensor(row["states"], row["states_dtype"], row["states_shape"])  # [T+1, C, h, w]
        odes = (
            decode_tensor(row["ode_states"], row["ode_states_dtype"], row["ode_states_shape"])
            if reuse and row["ode_states"] is not None
            else None
        )  # [W, C, h, w]
        w0, w, p = row["window_start"], row["window_size"], prompt_row[row["prompt"]]
        if problems := prefix_problems(cfg.branch.estimator, w):
            raise ConfigError(problems)
        for j in range(w if complete else 0):
            k = w0 + j
            if not est.completes(j):  # prefix:K, j ≥ K: the final image stands in (ρ_j = ρ_W)
                branches.append(Branch(row["trajectory_id"], j, k, num_steps, p, 0))
                continue
            if est.kind in ("coarse", "x0"):
                v = (
                    velocity_from_ode_state(
                        states[k][None], odes[j][None], sigmas[k].item(), sigmas[k + 1].item()
                    )[0]
                    if odes is not None
                    else None
                )  # [C, h, w]
                path = coarse_path(k, num_steps, est.steps)
                pending.append(len(branches))
                starts.append(states[k].float())
                paths.append(path)
                known.append(v)
                evals_j = len(path) - 1 - (1 if v is not None else 0)
                branches.append(Branch(row["trajectory_id"], j, k, k, p, evals_j))
                continue
            start, state = (k + 1, odes[j]) if odes is not None else (k, states[k])
            pending.append(len(branches))
            starts.append(state.float())
            branches.append(Branch(row["trajectory_id"], j, k, start, p, num_steps - start))
        # j = W: the trajectory's own final image (no evaluation)
        branches.append(Branch(row["trajectory_id"], w, w0 + w, num_steps, p, 0))

    latent_row = {b: n for n, b in enumerate(pending)}
    if not pending:
        return BranchResult(branches, torch.empty(0), latent_row, 0, 0)
    x = torch.stack(starts).to(policy.device)  # [N, C, h, w], rows in `pending` order
    start_of = torch.tensor([branches[b].start for b in pending])  # [N]
    cond_rows = torch.tensor([branches[b].prompt_row for b in pending])  # [N]
    needs_model = sum(branches[b].model_evals for b in pending) > 0
    size = (
        chunk
        or best_batch(
            policy,
            (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])),
            cond_all,
            uncond_one,
            cfg.sampling.guidance_scale,
            cfg.branch.chunk_size,
            limit=len(pending),
        )
        if needs_model
        else 1
    )
    if paths:
        x, calls, evals = _coarse_completions(
            policy, cfg, x, paths, known, sigmas, cond_all, cond_rows, uncond_one, size
        )
        return BranchResult(branches, x.cpu(), latent_row, calls, evals)
    calls = evals = 0
    first = int(start_of.min())
    bar = progress_bar(total=num_steps - first, desc="branch levels", unit="level")
    for g in range(first, num_steps):
        active = torch.nonzero(start_of <= g).flatten().tolist()  # every branch started by level g
        sigma, sigma_next = sigmas[g].item(), sigmas[g + 1].item()
        for idx in chunks(active, size):
            rows = torch.tensor(idx)
            cond = cond_all.select(cond_rows[rows])
            uncond = uncond_one.select([0] * len(idx)) if uncond_one is not None else None
            sig = torch.full((len(idx),), sigma, device=policy.device)  # [n]
            v = policy.velocity(x[rows], sig, cond, uncond, cfg.sampling.guidance_scale)  # [n, C, h, w]
            x[rows] = ode_step(x[rows], v, sigma, sigma_next)
            calls += 1
            evals += len(idx)
        bar.update(1)
    bar.close()
    return BranchResult(branches, x.cpu(), latent_row, calls, evals)


def _coarse_completions(
    policy: Policy,
    cfg: Config,
    x: torch.Tensor,
    paths: list[list[int]],
    known: list[torch.Tensor | None],
    sigmas: torch.Tensor,
    cond_all: Any,
    cond_rows: torch.Tensor,
    uncond_one: Any,
    size: int,
) -> tuple[torch.Tensor, int, int]:
    """Euler steps of every `coarse`/`x0` branch along its path of grid indices.

    Branches stand at grid points, so every branch at grid index `g` has the same σ: they batch
    together (their next points may differ). A branch's first step takes the rollout's velocity
    where it is known (`known`), so `x0` with reuse evaluates nothing.

    Args:
        x (`torch.Tensor`): `[N, C, h, w]` start states `s_k`, updated in place.
        paths (`list[list[int]]`): `[N]` grid indices each branch visits (`coarse_path`).
        known (`list`): `[N]` the rollout's velocity `[C, h, w]` at the start, or None.

    Returns:
        `(latents [N, C, h, w], model calls, model evaluations)`.
    """
    pos = [0] * len(paths)  # where each branch stands on its path
    levels = sorted({g for path in paths for g in path[:-1]})
    calls = evals = 0
    bar = progress_bar(total=len(levels), desc="branch levels", unit="level")
    for g in levels:
        here = [n for n, path in enumerate(paths) if pos[n] < len(path) - 1 and path[pos[n]] == g]
        free = [n for n in here if pos[n] == 0 and known[n] is not None]
        need = [n for n in here if not (pos[n] == 0 and known[n] is not None)]
        sigma = sigmas[g].item()
        if free:
            rows = torch.tensor(free)
            v = torch.stack([known[n] for n in free]).to(policy.device)  # type: ignore[misc]  # [n, C, h, w]
            nxt = sigmas[[paths[n][1] for n in free]].to(policy.device)  # [n]
            x[rows] = euler_to(x[rows], v, sigma, nxt)
        for idx in chunks(need, size):
            rows = torch.tensor(idx)
            cond = cond_all.select(cond_rows[rows])
            uncond = uncond_one.select([0] * len(idx)) if uncond_one is not None else None
            sig = torch.full((len(idx),), sigma, device=policy.device)  # [n]
            v = policy.velocity(x[rows], sig, cond, uncond, cfg.sampling.guidance_scale)  # [n, C, h, w]
            nxt = sigmas[[paths[n][pos[n] + 1] for n in idx]].to(policy.device)  # [n]
            x[rows] = euler_to(x[rows], v, sigma, nxt)
            calls += 1
            evals += len(idx)
        for n in here:
            pos[n] += 1
        bar.update(1)
    bar.close()
    return x, calls, evals


_SCALARS = (
    "trajectory_id",
    "prompt",
    "window_start",
    "window_size",
    "states",
    "states_dtype",
    "states_shape",
    "ode_states",
    "ode_states_dtype",
    "ode_states_shape",
)


def run_shard(
    cfg: Config,
    policy: Policy,
    *,
    iteration: int,
    rollouts_uri: str,
    output: str,
    shard: int = 0,
    num_shards: int = 1,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Complete and decode this shard's branches and write them as part files of `output`.

    Returns:
        stats: `branches`, `model_evals`, `model_calls`, `forward_samples` (×2 where guidance
        doubles the batch: SD3 with CFG), `seconds`.
    """
    started = time.perf_counter()
    groups = cfg.rollout.groups
    mine = shard_groups(groups, shard, num_shards)
    rollouts = read_table(
        rollouts_uri,
        "rollouts",
        columns=[*_SCALARS, "sigmas", "image"],
        filter=pc.field("group_id").isin(mine),
        storage_options=storage_options,
    ).sort_by("trajectory_id")
    result = complete_branches(policy, cfg, rollouts, completions=cfg.branch.completes(iteration))
    final_png = dict(
        zip(rollouts.column("trajectory_id").to_pylist(), rollouts.column("image").to_pylist(), strict=True)
    )
    decode_size = max(1, cfg.model.eval_batch)
    with DatasetWriter(output, "branches", shard=shard, storage_options=storage_options) as writer:
        order = list(range(len(result.branches)))
        bar = progress_bar(total=len(order), desc=f"branch decode it{iteration}", unit="img")
        for idx in chunks(order, decode_size):
            need = [i for i in idx if i in result.latent_row]
            images: Any = (
                policy.decode(result.latents[[result.latent_row[i] for i in need]].to(policy.device))
                if need
                else []
            )
            decoded = dict(zip(need, images, strict=True))
            rows: dict[str, list[Any]] = {
                k: []
                for k in ("iteration", "trajectory_id", "boundary", "grid_index", "image", "model_evals")
            }
            for i in idx:
                b = result.branches[i]
                rows["iteration"].append(iteration)
                rows["trajectory_id"].append(b.trajectory_id)
                rows["boundary"].append(b.boundary)
                rows["grid_index"].append(b.grid_index)
                rows["image"].append(encode_png(decoded[i]) if i in decoded else final_png[b.trajectory_id])
                rows["model_evals"].append(b.model_evals)
            writer.write(rows)
            bar.update(len(idx))
        bar.close()
    return {
        "branches": float(len(result.branches)),
        "model_evals": float(result.model_evals),
        "model_calls": float(result.model_calls),
        "forward_samples": forward_samples(policy, result.model_evals, cfg.sampling.guidance_scale),
        "seconds": time.perf_counter() - started,
    }
