"""What several stages share: seeds, the grid, prompt selection, chunking.

(The per-stage config hashes are part of the lineage: `tpgrpo.pipeline.lineage`.)

Seeds are derived, never drawn from global state: the initial noise and the step noise of a
trajectory come from `trajectory_seed(seed, iteration, trajectory_id)` alone, so the result of a
stage does not depend on how its work is batched, sharded or resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tpgrpo.algorithm import (
    STEP_STD_FLOOR,
    Window,
    flow_match_sigmas,
    grid_step_stds,
    num_trained_steps,
    resolve_window,
    window_problems,
)
from tpgrpo.algorithm.estimators import prefix_problems
from tpgrpo.config import Config
from tpgrpo.errors import ConfigError

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


def trajectory_seed(seed: int, iteration: int, trajectory_id: int) -> int:
    """The seed of one trajectory's noise (63-bit, from a `SeedSequence`)."""
    state = np.random.SeedSequence([seed, iteration, trajectory_id]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def trajectory_noise(
    traj_seed: int, shape: tuple[int, int, int], window_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial noise `s_0` `[C, h, w]` and the window's step noise `[W, C, h, w]` of one trajectory.

    Drawn on the CPU in float32 whatever the device, so a seed gives the same trajectory anywhere.
    """
    gen = torch.Generator().manual_seed(traj_seed)
    s0 = torch.randn(shape, generator=gen)  # [C, h, w]
    eps = torch.randn((window_size, *shape), generator=gen)  # [W, C, h, w]
    return s0, eps


@dataclass(frozen=True)
class Grid:
    """The sampling grid of a run: σ values and the SDE window."""

    sigmas: torch.Tensor  # [T+1] float32, σ_0 = 1 … σ_T = 0 (the policy's `sigmas`)
    window: Window

    @property
    def num_steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    @property
    def sigma_guard(self) -> float:
        """σ_1, used by the sde std where σ = 1 (SPEC §2)."""
        return float(self.sigmas[1])


def run_window(cfg: Config, sigmas: torch.Tensor) -> Window:
    """The SDE window of `cfg` on the grid `sigmas` (SPEC §2): explicit, or the default floor window.

    Raises:
        ConfigError: the window breaks SPEC §2's floor or the grid (each problem names the step, its
            std and the fix), or no step qualifies for the default window.
    """
    s = cfg.sampling
    problems = window_problems(sigmas, s.sampler, s.noise_level, s.window_start, s.window_size)
    if problems:
        raise ConfigError(problems)
    return resolve_window(sigmas, s.sampler, s.noise_level, s.window_start, s.window_size)


def config_grid(cfg: Config) -> torch.Tensor | None:
    """The training grid of `cfg`'s model read from its pipeline directory's configs (no weights),
    or None when the model is no local directory (a hub id: its grid is known once it is loaded).

    Raises:
        UserError: an unknown `embedded:` model (`resolve_model_path`).
        ValueError: the directory's scheduler, VAE or transformer config is unreadable.
    """
    from pathlib import Path

    from tpgrpo.models.factory import resolve_model_path
    from tpgrpo.models.schedule import directory_grid

    path = resolve_model_path(cfg.model.path)
    if not (Path(path) / "model_index.json").is_file():
        return None
    m = cfg.model
    return directory_grid(path, m.family, cfg.sampling.num_steps, m.height, m.width)


def window_check(cfg: Config) -> list[str]:
    """The problems of `cfg`'s SDE window on its model's grid (SPEC §2), as early as the grid is
    known: from the model directory's configs (`config_grid`); empty when the model is a hub id (then
    `make_grid` checks it on the loaded model's grid, before any rollout)."""
    try:
        sigmas = config_grid(cfg)
    except ValueError as err:
        return [f"model.path: cannot build the sampling grid from {cfg.model.path!r}: {err}"]
    if sigmas is None:
        return []
    s = cfg.sampling
    problems = window_problems(sigmas, s.sampler, s.noise_level, s.window_start, s.window_size)
    if problems:
        return problems
    window = run_window(cfg, sigmas)
    # issue 18: prefix:K needs K <= W, known once the window is (the default one needs the grid)
    return trained_steps_problems(cfg, window) + prefix_problems(cfg.branch.estimator, window.size)


def trained_steps_problems(cfg: Config, window: Window) -> list[str]:
    """What is wrong with `update.timestep_fraction` on `window` (empty: it trains at least one step)."""
    try:
        num_trained_steps(window.size, cfg.update.timestep_fraction)
    except ValueError as err:
        return [str(err)]
    return []


def describe_window(cfg: Config) -> str:
    """The window `cfg` trains, in words, e.g. `window [0, 8) (default: SPEC §2 floor 0.05, step 8 has
    std 0.0080)`; the rule alone when the grid is unknown before loading (a hub id)."""
    s = cfg.sampling
    sigmas = config_grid(cfg)
    if sigmas is None:
        if s.window_size is None:
            return f"window from step {s.window_start}: SPEC §2 default, set once the model's grid is loaded"
        return f"window [{s.window_start}, {s.window_start + s.window_size}) (explicit)"
    window = run_window(cfg, sigmas)
    if s.window_size is not None:
        return f"window [{window.start}, {window.start + window.size}) (explicit)"
    stds = grid_step_stds(sigmas, s.sampler, s.noise_level)  # [T]
    end = window.start + window.size
    why = (
        f"step {end} has std {float(stds[end]):.4f}"
        if end < stds.shape[0] - 1
        else f"the last step {end} is never trained"
    )
    return f"window [{window.start}, {end}) (default: SPEC §2 floor {STEP_STD_FLOOR}, {why})"


def make_grid(cfg: Config, policy: Policy | float) -> Grid:
    """The rollout grid of `cfg` on `policy`'s sampling grid, with the window of SPEC §2.

    Args:
        cfg (`Config`): `sampling.num_steps`, the window and sampler, `model.height/width`.
        policy (`Policy` or `float`): the σ values are `policy.sigmas(T, height, width)`, the grid
            its diffusers pipeline samples with (SD3: static shift; FLUX: shifted by image size).
            A bare number is taken as a static SD3 scheduler `shift` (`flow_match_sigmas`), for
            callers without a policy.

    Raises:
        ConfigError: the window breaks SPEC §2's floor on this grid (see `run_window`), or
            `update.timestep_fraction` trains no step of it.
    """
    steps = cfg.sampling.num_steps
    if isinstance(policy, bool):
        raise TypeError("make_grid: a policy or a scheduler shift, not a boolean")
    if isinstance(policy, int | float):
        sigmas = flow_match_sigmas(steps, shift=float(policy))  # [T+1]
    else:
        sigmas = policy.sigmas(steps, cfg.model.height, cfg.model.width)  # [T+1]
    window = run_window(cfg, sigmas)
    window.validate(steps, cfg.sampling.sampler)
    problems = trained_steps_problems(cfg, window)
    if problems:
        raise ConfigError(problems)
    return Grid(sigmas, window)


def uses_uncond(policy: Policy, guidance_scale: float) -> bool:
    """Whether velocities need the unconditional prompt: guidance on and it doubles the batch (SD3)."""
    return guidance_scale > 1.0 and bool(policy.guidance_doubles_batch)


def forward_samples(policy: Policy, model_evals: int, guidance_scale: float) -> float:
    """Transformer samples behind `model_evals` velocity evaluations (×2 with SD3's CFG batch)."""
    return float(model_evals * (2 if uses_uncond(policy, guidance_scale) else 1))


def select_prompt_rows(num_prompts: int, cfg: Config, iteration: int) -> np.ndarray:
    """Which prompts (row indices) the groups of `iteration` use, deterministically.

    Returns:
        `np.ndarray` `[groups]`: without repetition while the prompt set is large enough.
    """
    groups = cfg.rollout.groups
    rng = np.random.default_rng([cfg.seed, iteration, 1])
    if num_prompts >= groups:
        return rng.permutation(num_prompts)[:groups]
    return rng.choice(num_prompts, size=groups, replace=True)


def shard_groups(groups: int, shard: int, num_shards: int) -> list[int]:
    """The prompt groups a shard owns (round robin, so shards get equal work)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} outside 0 … {num_shards - 1}")
    return list(range(shard, groups, num_shards))


def encode_prompts(policy: Policy, prompts: Sequence[str]) -> Any:
    """The conditioning of `prompts` `[n, ...]`, each distinct prompt encoded on its own.

    Text encoders are not batch-invariant to the last bit (a `[B, D]` projection takes another
    kernel path for another `B`), so encoding a chunk's prompts together would make a prompt's
    conditioning depend on which prompts share its chunk, shard or rank. One prompt per forward makes
    it a function of the prompt alone; a stage encodes a handful of distinct prompts, so it is cheap.

    Returns:
        `Conditioning`: `[n, ...]`, rows in `prompts` order (repeats allowed).
    """
    from tpgrpo.models.conditioning import Conditioning

    unique = list(dict.fromkeys(prompts))
    if not unique:
        raise ValueError("encode_prompts: no prompts to encode")
    table = Conditioning.cat([policy.encode([p]) for p in unique])  # [u, ...]
    row = {p: i for i, p in enumerate(unique)}
    return table.select([row[p] for p in prompts])


def chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    """Consecutive chunks of at most `size` items."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
