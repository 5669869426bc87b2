"""Stage 5, update: the clipped GRPO step on the LoRA adapter (SPEC §6).

Every trained transition `(trajectory, j)` — grid step `k = w0 + j` from stored `s_k` to stored
`s_{k+1}` — gets its log-prob recomputed under the current policy (same sampler, same σ's), compared
with the stored rollout log-prob (ratio exactly 1 on the first pass: same weights), and weighted by
its advantage from the annotation. With `update.kl_beta > 0` the adapter-disabled base model's
mean at the same state gives the KL term. Per epoch, the kept trajectories are shuffled (seeded by
run seed, iteration and epoch) and split into `update.optimizer_steps` equal parts; each part's
transitions accumulate, in micro-batches, into one optimizer step (grad-norm clipped). The EMA of
the adapter is updated every `update.ema_every` optimizer steps.

With `update.timestep_fraction < 1`, each trajectory trains only a random subset of its window's
steps in each epoch (`tpgrpo.algorithm.subsets`: seeded by run seed, iteration, epoch and trajectory
id, so a resume trains the same transitions), and the loss is the mean over the trained transitions.

Per-step diagnostics: a part's transitions are processed step by step (`j = 0 … W−1`, each step's
transitions in micro-batches of that step only), and the gradient accumulated over step `j` is
taken out and kept apart (`StepGradients`): exactly the gradient of step `j`'s part of the loss,
whose norm (before clipping) is `grad_norm_by_step[j]` of the `updates` row; the optimizer step
uses their sum. Beside it: the clip fraction, mean |advantage| and share of non-zero advantages of
each step's transitions.

Data-parallel (`DataParallel`, under torchrun): every rank holds the same data, weights and
optimizer; each takes a contiguous slice of every trained step's transitions of the optimizer step,
accumulates its micro-batches' gradients (each micro-batch weighted by its share of the *whole*
optimizer step), and after each trained step one all-reduce sums the ranks' gradients into that
step's gradient of the single-process step: the per-step norms are those of the whole step, not
per rank, and their sum is the step's full gradient. That costs `W` all-reduces of the adapter's
gradient per optimizer step instead of one. Every rank then takes the same clipped optimizer step.
World size 1 is the single-process update (no collective).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tpgrpo.algorithm import (
    grpo_loss,
    kl_to_reference,
    num_trained_steps,
    sampler_step,
    trained_step_mask,
    zero_advantage_mask,
)
from tpgrpo.config import Config
from tpgrpo.errors import ConfigError, DataError
from tpgrpo.models.lora import lora_parameters, reference_mode
from tpgrpo.schemas.tensors import decode_tensor_column
from tpgrpo.stages.checkpoints import TrainState
from tpgrpo.stages.common import encode_prompts, forward_samples
from tpgrpo.stages.progress import progress_bar
from tpgrpo.storage import read_table

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


@dataclass
class UpdateData:
    """One iteration's training data, in trajectory order."""

    trajectory_ids: np.ndarray  # [N]
    prompts: list[str]  # [N]
    states: torch.Tensor  # [N, T+1, C, h, w] float32
    log_probs: torch.Tensor  # [N, W] stored rollout log-probs
    advantages: torch.Tensor  # [N, W]
    sigmas: torch.Tensor  # [T+1]
    window_start: int
    window_size: int


def load_update_data(
    rollouts_uri: str, annotations_uri: str, storage_options: Mapping[str, Any] | None = None
) -> UpdateData:
    """Join rollouts and annotations into tensors.

    Raises:
        DataError: an annotation is missing or duplicated for a trained transition.
    """
    roll = read_table(
        rollouts_uri,
        "rollouts",
        columns=[
            "trajectory_id",
            "prompt",
            "sigmas",
            "window_start",
            "window_size",
            "states",
            "states_dtype",
            "states_shape",
            "log_probs",
        ],
        storage_options=storage_options,
    ).sort_by("trajectory_id")
    ann = read_table(
        annotations_uri,
        "annotations",
        columns=["trajectory_id", "step", "advantage"],
        storage_options=storage_options,
    )
    tids = roll.column("trajectory_id").to_numpy()
    w = int(roll.column("window_size")[0].as_py())
    row_of = {int(t): i for i, t in enumerate(tids)}
    adv = np.full((len(tids), w), np.nan)
    for t, j, a in zip(
        ann.column("trajectory_id").to_numpy(),
        ann.column("step").to_numpy(),
        ann.column("advantage").to_numpy(),
        strict=True,
    ):
        if int(t) not in row_of or not 0 <= int(j) < w or not np.isnan(adv[row_of[int(t)], int(j)]):
            raise DataError(f"annotation for trajectory {t}, step {j} is unexpected or duplicated")
        adv[row_of[int(t)], int(j)] = a
    if np.isnan(adv).any():
        n, j = np.argwhere(np.isnan(adv))[0]
        raise DataError(f"no annotation for trajectory {tids[n]}, step {j}: rerun the annotate stage")
    log_probs = torch.tensor(np.array(roll.column("log_probs").to_pylist(), dtype=np.float32))  # [N, W]
    return UpdateData(
        trajectory_ids=tids,
        prompts=roll.column("prompt").to_pylist(),
        states=decode_tensor_column(roll, "states").float(),  # [N, T+1, C, h, w]
        log_probs=log_probs,
        advantages=torch.tensor(adv, dtype=torch.float32),
        sigmas=torch.tensor(roll.column("sigmas")[0].as_py(), dtype=torch.float32),
        window_start=int(roll.column("window_start")[0].as_py()),
        window_size=w,
    )


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the update's data-parallel ranks (world size 1: alone).

    With `world_size > 1` the default `torch.distributed` process group must be initialised
    (`tpgrpo.flows.ddp_update` does it under torchrun).
    """

    rank: int = 0
    world_size: int = 1

    def share(self, n: int) -> tuple[int, int]:
        """`[lo, hi)` of this rank's contiguous slice of `n` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (nothing to do alone)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (pickled; for small decisions only)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


@dataclass
class StepStats:
    """Sums over the transitions of one optimizer step (divided by `samples` when reported), in total
    and per trained step `j` (`steps` of them)."""

    steps: int
    samples: int = 0
    loss: float = 0.0
    policy_loss: float = 0.0
    kl: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    ratio: float = 0.0
    samples_by_step: list[float] = field(default_factory=list)  # [W]
    clipped_by_step: list[float] = field(default_factory=list)  # [W] clipped transitions

    def __post_init__(self) -> None:
        self.samples_by_step = [0.0] * self.steps
        self.clipped_by_step = [0.0] * self.steps

    def add(self, j: int, n: int, out: Any) -> None:
        """Add a micro-batch of `n` transitions of trained step `j` with loss output `out`."""
        self.samples += n
        self.loss += n * float(out.loss.detach())
        self.policy_loss += n * out.policy_loss
        self.kl += n * out.kl
        self.clip_frac += n * out.clip_frac
        self.approx_kl += n * out.approx_kl
        self.ratio += n * out.ratio_mean
        self.samples_by_step[j] += n
        self.clipped_by_step[j] += n * out.clip_frac

    def all_reduce_(self, dp: DataParallel, device: torch.device) -> None:
        """Sum the stats over the ranks (float64, so the sums are the single-process ones to rounding)."""
        if dp.world_size == 1:
            return
        values = [self.samples, self.loss, self.policy_loss, self.kl, self.clip_frac, self.approx_kl]
        t = torch.tensor(
            [*values, self.ratio, *self.samples_by_step, *self.clipped_by_step],
            dtype=torch.float64,
            device=device,
        )  # [7 + 2W]
        dp.all_reduce_(t)
        out = t.tolist()
        self.samples = round(out[0])
        self.loss, self.policy_loss, self.kl, self.clip_frac, self.approx_kl, self.ratio = out[1:7]
        self.samples_by_step = out[7 : 7 + self.steps]
        self.clipped_by_step = out[7 + self.steps :]

    def row(self) -> dict[str, Any]:
        n = max(1, self.samples)
        return {
            "loss": self.loss / n,
            "policy_loss": self.policy_loss / n,
            "kl": self.kl / n,
            "clip_frac": self.clip_frac / n,
            "approx_kl": self.approx_kl / n,
            "ratio_mean": self.ratio / n,
            "clip_frac_by_step": [
                c / m if m else 0.0 for c, m in zip(self.clipped_by_step, self.samples_by_step, strict=True)
            ],
        }


class StepGradients:
    """The gradient of each trained step's part of an optimizer step's loss, kept apart.

    The transitions of an optimizer step are backpropagated step by step; `close()` after the last
    micro-batch of step `j` moves the gradients accumulated since the previous close (step `j`'s, on
    this rank) out of the parameters into a running total, summed over the ranks first (one
    all-reduce) so it is step `j`'s gradient of the whole optimizer step, and records its L2 norm.
    `finish()` hands every parameter the total: the optimizer step's gradient, over all ranks (this
    replaces one all-reduce of the whole gradient with one per trained step).

    Args:
        params (`list[torch.Tensor]`): the trainable parameters (the LoRA adapter).
        dp (`DataParallel`): this rank's place.
    """

    def __init__(self, params: list[torch.Tensor], dp: DataParallel) -> None:
        self.params = params
        self.dp = dp
        self.norms: list[float] = []  # [j] L2 norm of step j's gradient, before clipping
        self._total: torch.Tensor | None = None  # [P] float32 sum of the closed steps' gradients

    def close(self) -> None:
        """Take the next trained step's gradient (every rank calls it, in step order)."""
        step = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in self.params]
        )  # [P] this rank's step gradient (a copy)
        for p in self.params:
            p.grad = None
        self.dp.all_reduce_(step)  # [P] the step's gradient over all ranks
        self.norms.append(float(torch.linalg.vector_norm(step)))
        self._total = step if self._total is None else self._total.add_(step)

    def finish(self) -> None:
        """Every parameter's gradient becomes the sum of the closed steps' gradients."""
        if self._total is None:
            return
        offset = 0
        for p in self.params:
            p.grad = self._total[offset : offset + p.numel()].view_as(p).to(p.dtype)  # views when float32
            offset += p.numel()


def _micro_batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _recompute(
    cfg: Config,
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    x_next: torch.Tensor,
    sigma_guard: float,
) -> Any:
    """The sampler step `x → x_next` recomputed (mean, std, log-prob) under velocity `v`."""
    return sampler_step(
        cfg.sampling.sampler,
        x,
        v,
        sigma,
        sigma_next,
        noise_level=cfg.sampling.noise_level,
        sigma_guard=sigma_guard,
        prev_sample=x_next,
        exact_cps_logprob=cfg.sampling.exact_cps_logprob,
    )


def transition_loss(
    policy: Policy,
    cfg: Config,
    data: UpdateData,
    batch: list[tuple[int, int]],
    cond: Any,
    uncond: Any,
) -> Any:
    """The GRPO loss of a micro-batch of transitions `(row, j)` (per-sample σ's in one forward)."""
    rows = torch.tensor([r for r, _ in batch])  # [n]
    ks = torch.tensor([data.window_start + j for _, j in batch])  # [n] grid indices
    dev = policy.device
    x = data.states[rows, ks].to(dev)  # [n, C, h, w]
    x_next = data.states[rows, ks + 1].to(dev)  # [n, C, h, w]
    sigma = data.sigmas[ks].to(dev)  # [n]
    sigma_next = data.sigmas[ks + 1].to(dev)  # [n]
    c = cond.select(rows)
    u = uncond.select(rows) if uncond is not None else None
    v = policy.velocity(x, sigma, c, u, cfg.sampling.guidance_scale)  # [n, C, h, w], with grad
    out = _recompute(cfg, x, v, sigma, sigma_next, x_next, float(data.sigmas[1]))
    kl = None
    if cfg.update.kl_beta > 0:
        with torch.no_grad(), reference_mode(policy.transformer):
            v_ref = policy.velocity(x, sigma, c, u, cfg.sampling.guidance_scale)
            ref = _recompute(cfg, x, v_ref, sigma, sigma_next, x_next, float(data.sigmas[1]))
        kl = kl_to_reference(out.mean, ref.mean, out.std)  # [n]
    if out.log_prob is None:
        raise DataError("a trained transition has zero noise: the window must only hold stochastic steps")
    old = data.log_probs[rows, torch.tensor([j for _, j in batch])].to(dev)  # [n]
    adv = data.advantages[rows, torch.tensor([j for _, j in batch])].to(dev)  # [n]
    return grpo_loss(out.log_prob, old, adv, clip_range=cfg.update.clip_range, kl=kl, beta=cfg.update.kl_beta)


def set_gradient_checkpointing(transformer: Any, enabled: bool) -> None:
    """Turn the diffusers transformer's activation recomputation on or off (`update.gradient_checkpointing`).

    It only acts in training mode with gradients on, so sampling and the no-grad KL reference are
    unaffected; the gradients are the same, the backward pass recomputes each block's forward.
    """
    if enabled:
        transformer.enable_gradient_checkpointing()
    elif getattr(transformer, "is_gradient_checkpointing", False):
        transformer.disable_gradient_checkpointing()


def advantage_by_step(adv: torch.Tensor, trained: np.ndarray | None = None) -> dict[str, list[float]]:
    """Per trained step of `adv` `[n, W]` (an optimizer step's trajectories): the mean |advantage|
    (`adv_abs_by_step`) and the share of non-zero advantages (`adv_nonzero_by_step`), `[W]` each,
    over the transitions trained (`trained` `[n, W]` bool, `update.timestep_fraction`; None: all;
    0 for a step none of them trains)."""
    if trained is None or trained.all():
        return {
            "adv_abs_by_step": adv.abs().mean(dim=0).double().tolist(),  # [W]
            "adv_nonzero_by_step": (adv != 0).double().mean(dim=0).tolist(),  # [W]
        }
    m = torch.from_numpy(trained).double()  # [n, W]
    count = m.sum(dim=0).clamp(min=1)  # [W]
    a = adv.double()  # [n, W]
    return {
        "adv_abs_by_step": ((a.abs() * m).sum(dim=0) / count).tolist(),  # [W]
        "adv_nonzero_by_step": (((a != 0).double() * m).sum(dim=0) / count).tolist(),  # [W]
    }


def trained_steps(cfg: Config, data: UpdateData, iteration: int, epoch: int) -> np.ndarray:
    """`[N, W]` bool: the window steps each trajectory of `data` trains in `epoch` (all of them unless
    `update.timestep_fraction` < 1; see `tpgrpo.algorithm.subsets`).

    Raises:
        ConfigError: the fraction trains no step of this window.
    """
    fraction = cfg.update.timestep_fraction
    try:
        num_trained_steps(data.window_size, fraction)
    except ValueError as err:
        raise ConfigError([str(err)]) from None
    return trained_step_mask(cfg.seed, iteration, epoch, data.trajectory_ids, data.window_size, fraction)


def train_iteration(
    policy: Policy,
    cfg: Config,
    data: UpdateData,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    state: TrainState,
    iteration: int,
    dp: DataParallel | None = None,
) -> list[dict[str, Any]]:
    """Run the optimizer steps of one iteration; returns one `updates` row per optimizer step.

    Args:
        dp (`DataParallel`, *optional*): this rank's place when data-parallel; every rank returns
            the same rows and ends with the same weights, optimizer and EMA.
    """
    dp = dp or DataParallel()
    params = lora_parameters(policy.transformer)
    keep = np.arange(len(data.trajectory_ids))
    if cfg.advantage.skip_zero:
        keep = keep[~zero_advantage_mask(data.advantages.numpy())]
    rows_out: list[dict[str, Any]] = []
    if keep.size == 0:
        return rows_out
    # each prompt encoded alone, so a transition's conditioning never depends on its rank's slice
    cond = encode_prompts(policy, data.prompts)
    uncond = encode_prompts(policy, [""] * len(data.prompts)) if cfg.sampling.guidance_scale > 1.0 else None
    parts = cfg.update.optimizer_steps
    total = cfg.update.epochs * parts
    bar = progress_bar(total=total, desc=f"update it{iteration}", unit="step")
    set_gradient_checkpointing(policy.transformer, cfg.update.gradient_checkpointing)
    policy.transformer.train()
    try:
        for epoch in range(cfg.update.epochs):
            order = np.random.default_rng([cfg.seed, iteration, epoch, 2]).permutation(keep)
            trained = trained_steps(cfg, data, iteration, epoch)  # [N, W] bool
            for part in np.array_split(order, parts):
                rows = [int(r) for r in part]
                if not rows:
                    continue
                # the mean over the trained transitions: with timestep_fraction < 1 each trajectory's
                # loss is divided by its number of trained steps (DanceGRPO's `/ train_timesteps`)
                total_transitions = int(trained[rows].sum())
                stats = StepStats(data.window_size)
                optimizer.zero_grad(set_to_none=True)
                grads = StepGradients(list(params.values()), dp)
                for j in range(data.window_size):  # step by step: per-step gradient norms
                    step_items = [(r, j) for r in rows if trained[r, j]]
                    lo, hi = dp.share(len(step_items))  # this rank's slice (all of it when alone)
                    for mb in _micro_batches(step_items[lo:hi], cfg.update.micro_batch):
                        out = transition_loss(policy, cfg, data, mb, cond, uncond)
                        # weighted by the micro-batch's share of the whole optimizer step: summed over
                        # micro-batches, steps and ranks, the gradient is that of the mean loss over
                        # the optimizer step's transitions
                        (out.loss * (len(mb) / total_transitions)).backward()
                        stats.add(j, len(mb), out)
                    grads.close()
                grads.finish()
                stats.all_reduce_(dp, policy.device)
                grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.update.grad_clip)
                if not torch.isfinite(grad_norm):
                    raise DataError(
                        f"non-finite gradient norm at iteration {iteration}, optimizer step "
                        f"{state.optimizer_step}: check the rewards and advantages of this iteration"
                    )
                optimizer.step()
                state.optimizer_step += 1
                if state.optimizer_step % cfg.update.ema_every == 0:
                    ema.update(params)
                rows_out.append(
                    {
                        "iteration": iteration,
                        "optimizer_step": state.optimizer_step,
                        **stats.row(),
                        "grad_norm": float(grad_norm),
                        "lr": float(optimizer.param_groups[0]["lr"]),
                        "epoch": epoch,
                        "samples": stats.samples,
                        "grad_norm_by_step": grads.norms,
                        **advantage_by_step(data.advantages[rows], trained[rows]),
                    }
                )
                bar.update(1)
    finally:
        policy.transformer.eval()
        optimizer.zero_grad(set_to_none=True)
        bar.close()
    return rows_out


def run(
    cfg: Config,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    state: TrainState,
    *,
    iteration: int,
    rollouts_uri: str,
    annotations_uri: str,
    storage_options: Mapping[str, Any] | None = None,
    dp: DataParallel | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train on one iteration; the caller writes the checkpoint and the `updates` dataset.

    Args:
        dp (`DataParallel`, *optional*): this rank's place when data-parallel (see `train_iteration`).

    Returns:
        (`updates` rows, summary stats with `seconds`, `model_evals` (velocity evaluations: one per
        trained transition, two with KL) and `forward_samples` (transformer samples, ×2 where
        guidance doubles the batch: SD3 with CFG); the same on every rank).
    """
    started = time.perf_counter()
    data = load_update_data(rollouts_uri, annotations_uri, storage_options)
    rows = train_iteration(policy, cfg, data, optimizer, ema, state, iteration, dp)
    transitions = sum(r["samples"] for r in rows)
    evals = transitions * (2 if cfg.update.kl_beta > 0 else 1)
    return rows, {
        "seconds": time.perf_counter() - started,
        "model_evals": float(evals),
        "forward_samples": forward_samples(policy, evals, cfg.sampling.guidance_scale),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Summary metrics of an iteration's `updates` rows for the manifest."""
    if not rows:
        return {"optimizer_steps": 0}
    n = len(rows)
    return {
        "optimizer_steps": n,
        "loss_mean": sum(r["loss"] for r in rows) / n,
        "kl_mean": sum(r["kl"] for r in rows) / n,
        "clip_frac_mean": sum(r["clip_frac"] for r in rows) / n,
        "first_ratio_mean": rows[0]["ratio_mean"],
        "grad_norm_mean": sum(r["grad_norm"] for r in rows) / n,
    }
