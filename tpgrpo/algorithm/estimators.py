"""Cheaper boundary rewards: how the branch stage estimates the completion `C(s_k)` (issue 18).

SPEC §3 defines `C(s_k)` as the ODE completion of `s_k` on the rollout's own grid: `T − k` model
evaluations (one less when the rollout's velocity at `s_k` is reused). The estimators below trade
exactness for evaluations; each still decodes and scores one image per window boundary.

| estimator | completion of boundary j < W (grid index k = w0 + j) | evaluations per branch (reuse) |
|---|---|---|
| `exact` | every remaining grid step, `k → T` | `T − k − 1` |
| `coarse` (n = `coarse_steps`) | n Euler steps on grid points `k = i_0 < … < i_n = T` | `n − 1` |
| `x0` | one Euler step to σ = 0: `x̂0 = s_k − σ_k·v_k` | `0` |
| `prefix:K` | `exact` for `j < K`; the final image for `j ≥ K` | `T − k − 1` (`j < K`), else 0 |

`x0` is `coarse` with one step: one Euler step from `σ_k` to `0` is `s_k + (0 − σ_k)·v_k`.
With reuse, the first Euler step of `coarse` and `x0` takes the velocity the rollout already
computed at `s_k`, recovered from the stored ODE-step state `o_k = s_k + (σ_{k+1} − σ_k)·v_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

KINDS = ("exact", "coarse", "x0", "prefix")
COARSE_STEPS = (1, 3)
"""Allowed range of `branch.coarse_steps` (inclusive); 2 when unset."""
DEFAULT_COARSE_STEPS = 2


@dataclass(frozen=True)
class Estimator:
    """A parsed `branch.estimator`.

    Args:
        kind (`str`): one of `KINDS`.
        steps (`int`): Euler steps of a `coarse` completion (1 for `x0`, 0 otherwise).
        prefix (`int`): K of `prefix:K` (0 otherwise).
    """

    kind: str
    steps: int = 0
    prefix: int = 0

    @property
    def label(self) -> str:
        """How manifests and `runs show` name it: `exact`, `coarse:2`, `x0`, `prefix:3`."""
        if self.kind == "coarse":
            return f"coarse:{self.steps}"
        if self.kind == "prefix":
            return f"prefix:{self.prefix}"
        return self.kind

    def completes(self, boundary: int) -> bool:
        """Whether boundary `j < W` gets a completion (False: it takes the final image, `ρ_W`)."""
        return self.kind != "prefix" or boundary < self.prefix


def parse_estimator(text: str, coarse_steps: int | None = None) -> Estimator:
    """`exact`, `coarse`, `x0` or `prefix:K` (K ≥ 1) into an `Estimator`.

    Raises:
        ValueError: an unknown name, a malformed or non-positive K, `coarse_steps` out of range.
    """
    name, sep, arg = text.partition(":")
    if name == "prefix":
        if not sep or not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"{text!r}: prefix needs a number of window boundaries K ≥ 1, e.g. prefix:3")
        return Estimator("prefix", prefix=int(arg))
    if sep or name not in KINDS:
        raise ValueError(f"unknown estimator {text!r}: choose one of exact, coarse, x0, prefix:K (K ≥ 1)")
    if name == "coarse":
        steps = DEFAULT_COARSE_STEPS if coarse_steps is None else coarse_steps
        lo, hi = COARSE_STEPS
        if not lo <= steps <= hi:
            raise ValueError(f"coarse_steps={steps} is out of range; use {lo} … {hi}")
        return Estimator("coarse", steps=steps)
    if name == "x0":
        return Estimator("x0", steps=1)
    return Estimator(name)


def prefix_problems(text: str, window_size: int) -> list[str]:
    """The problem of a `prefix:K` estimator on a window of `W` trained steps (`K > W`), if any."""
    try:
        est = parse_estimator(text)
    except ValueError as err:
        return [f"branch.estimator: {err}"]
    if est.kind == "prefix" and est.prefix > window_size:
        return [
            f"branch.estimator=prefix:{est.prefix} needs K ≤ W, the window's {window_size} boundaries "
            f"(prefix:{window_size} is exact); lower K"
        ]
    return []


def coarse_path(start: int, num_steps: int, steps: int) -> list[int]:
    """Grid indices a `coarse` completion from grid index `start` visits, `start` first and `T` last.

    `steps` Euler steps over the remaining `T − start` grid steps, grouped into blocks of nearly
    equal count (`i_m = start + round(m·(T − start)/steps)`, halves up); on a static-shift grid
    (SD3) that is the model's own schedule with fewer steps. Where fewer grid steps remain than
    `steps`, every one is taken (the exact completion).

    Example: `start = 0, T = 10, steps = 3` → `[0, 3, 7, 10]`; `start = 8, T = 10, steps = 3` →
    `[8, 9, 10]`.
    """
    if not 0 <= start < num_steps or steps < 1:
        raise ValueError(f"coarse_path: need 0 ≤ start < T and steps ≥ 1, got {start}, {num_steps}, {steps}")
    remaining = num_steps - start
    n = min(steps, remaining)
    return [start + (2 * m * remaining + n) // (2 * n) for m in range(n + 1)]


def velocity_from_ode_state(state: Tensor, ode_state: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """The rollout's velocity at `s_k`, from the stored ODE-step state `o_k = s_k + (σ' − σ)·v_k`.

    Args:
        state (`torch.Tensor`): `[B, ...]` `s_k`.
        ode_state (`torch.Tensor`): `[B, ...]` `o_k`.
        sigma, sigma_next (`float`): `σ_k > σ_{k+1}`.

    Returns:
        `torch.Tensor`: `[B, ...]` float32 `v_k = (o_k − s_k) / (σ_{k+1} − σ_k)`.
    """
    if not sigma_next < sigma:
        raise ValueError(f"need σ' < σ, got σ={sigma}, σ'={sigma_next}")
    # float32: the states are stored in float32 and the difference is one step's change
    return (ode_state.float() - state.float()) / (sigma_next - sigma)  # [B, ...]


def x0_estimate(state: Tensor, velocity: Tensor, sigma: float | Tensor) -> Tensor:
    """One-step estimate of the clean latent, `x̂0 = s − σ·v` (one Euler step from σ to 0).

    Args:
        state (`torch.Tensor`): `[B, ...]` `s_k`.
        velocity (`torch.Tensor`): `[B, ...]` `v_k` at `(s_k, σ_k)`.
        sigma (`float` or `torch.Tensor`): scalar or `[B]` `σ_k`.

    Returns:
        `torch.Tensor`: `[B, ...]` float32.
    """
    return euler_to(state, velocity, sigma, 0.0)


def euler_to(state: Tensor, velocity: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """An Euler step of any length, per sample: `s' = s + (σ' − σ)·v` with `σ`, `σ'` scalar or `[B]`.

    Returns:
        `torch.Tensor`: `[B, ...]` float32.
    """
    x, v = state.float(), velocity.float()  # [B, ...]; float32 as every sampler step (SPEC §2)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sig_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    sig = sig.reshape(shape) if sig.dim() else sig  # [B, 1, ...] or scalar
    sig_next = sig_next.reshape(shape) if sig_next.dim() else sig_next
    return x + (sig_next - sig) * v  # [B, ...]


def branch_evals(estimator: Estimator, boundary: int, grid_index: int, num_steps: int, reuse: bool) -> int:
    """Model evaluations of the completion of window boundary `j < W` at grid index `k`.

    `exact` (and `prefix:K` for `j < K`): `T − k` (one less with reuse); `coarse`/`x0`: one per
    Euler step, the first free with reuse; `prefix:K` for `j ≥ K`: none.
    """
    if not estimator.completes(boundary):
        return 0
    if estimator.kind in ("exact", "prefix"):
        return num_steps - grid_index - (1 if reuse else 0)
    steps = len(coarse_path(grid_index, num_steps, estimator.steps)) - 1
    return steps - (1 if reuse else 0)


def prefix_rho(rho: np.ndarray, prefix: int) -> np.ndarray:
    """The boundary rewards `prefix:K` yields from exact ones: `ρ_j` for `j < K`, `ρ_W` after.

    Args:
        rho (`np.ndarray`): `[N, W + 1]` exact boundary rewards.
        prefix (`int`): K, `1 ≤ K ≤ W`.

    Returns:
        `np.ndarray`: `[N, W + 1]` float64 (for a deterministic reward: what scoring the
        `prefix:K` branches gives).
    """
    out = np.array(rho, dtype=np.float64)  # [N, W + 1]
    w = out.shape[1] - 1
    if not 1 <= prefix <= w:
        raise ValueError(f"prefix K={prefix} outside 1 … W={w}")
    out[:, prefix:] = out[:, -1:]
    return out
