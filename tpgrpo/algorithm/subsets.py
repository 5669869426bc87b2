"""Random subsets of the trained steps (DanceGRPO's `timestep_fraction`).

DanceGRPO draws, per sample, a random permutation of the trajectory's steps and trains the first
`int(steps · fraction)` of them. Here the subset of a trajectory in one epoch of one iteration is a
function of `(run seed, iteration, epoch, trajectory_id)` alone, never of global random state, of
the order trajectories are processed in, of the optimizer step they fall into or of the
data-parallel rank: a resumed or re-run update trains the same transitions, and an audit can
recompute which steps were trained from the run's config. With `fraction = 1` every step is trained
and no random number is drawn.

The subset is of the window's steps `j = 0 … W−1` (SPEC §2): turning points, step rewards and
advantages are annotated on all of them; only the sampled ones enter the loss.
"""

from __future__ import annotations

import math

import numpy as np


def num_trained_steps(window_size: int, fraction: float) -> int:
    """How many of a window's `W` steps a trajectory trains: `floor(W · fraction)` (DanceGRPO's
    `int(len(timesteps) · timestep_fraction)`).

    Args:
        window_size (`int`): `W` (≥ 1).
        fraction (`float`): in `(0, 1]`.

    Raises:
        ValueError: the fraction is outside `(0, 1]`, or `W · fraction < 1` (no step would be trained).
    """
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise ValueError(f"window_size must be an integer >= 1, got {window_size!r}")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"timestep fraction must lie in (0, 1], got {fraction!r}")
    # 1e-9: 0.7·10 is 7.000000000000001 but 0.29·100 is 28.999999999999996 in binary floating point
    n = math.floor(window_size * fraction + 1e-9)
    if n < 1:
        raise ValueError(
            f"update.timestep_fraction={fraction} trains floor({window_size} × {fraction}) = 0 of the "
            f"window's {window_size} steps; use a fraction ≥ {1 / window_size:.4g}"
        )
    return n


def trained_step_mask(
    seed: int, iteration: int, epoch: int, trajectory_ids: np.ndarray, window_size: int, fraction: float
) -> np.ndarray:
    """Which window steps each trajectory trains in one epoch of one iteration.

    Args:
        seed (`int`): the run's seed.
        iteration (`int`): the iteration.
        epoch (`int`): the update epoch (each epoch draws its own subsets).
        trajectory_ids (`np.ndarray`): `[N]` int trajectory ids.
        window_size (`int`): `W`.
        fraction (`float`): `update.timestep_fraction`, in `(0, 1]`.

    Returns:
        `np.ndarray`: `[N, W]` bool, `num_trained_steps(W, fraction)` true entries per row.
    """
    tids = np.asarray(trajectory_ids)
    if tids.ndim != 1 or not np.issubdtype(tids.dtype, np.integer):
        raise ValueError(f"trajectory_ids must be a 1-D integer array, got {tids.dtype} {tuple(tids.shape)}")
    n = num_trained_steps(window_size, fraction)
    mask = np.zeros((tids.shape[0], window_size), dtype=bool)  # [N, W]
    if n == window_size:
        mask[:] = True
        return mask
    for row, tid in enumerate(tids.tolist()):
        rng = np.random.default_rng([seed, iteration, epoch, tid, 3])
        mask[row, rng.permutation(window_size)[:n]] = True
    return mask
