"""The sampling grid of a loaded pipeline: the σ values its own `__call__` would sample with.

SPEC §1: the grid is the diffusers scheduler's grid with the model's shift. How the shift is
chosen differs by family, so each policy's `sigmas(num_steps, height, width)` rebuilds the
scheduler call of its pipeline's `__call__` and hands the result to `scheduler_grid` here:

- SD3 / SD3.5 (`StableDiffusion3Pipeline`): `retrieve_timesteps(scheduler, T)`, the static
  `scheduler.config.shift`; a scheduler with `use_dynamic_shifting` gets `mu` from the latent patch
  count (`calculate_shift`, `max_shift` default 1.16 as in that pipeline).
- FLUX (`FluxPipeline`): `sigmas = linspace(1, 1/T, T)` (none with `use_flow_sigmas`) and
  `mu = calculate_shift(packed sequence length, base/max_image_seq_len, base/max_shift)` — dynamic,
  resolution-dependent shifting.

`family_grid` is that scheduler call for either family, given the scheduler and the latent size.
It runs the pipeline module's own `retrieve_timesteps` (`scheduler_grid`) on a deep copy of the
scheduler (its state, `set_shift` included, without touching the original), so the values are
those of `__call__` bit for bit, for any scheduler option (shift_terminal, Karras, …).
`check_grid` then enforces what the samplers assume of a grid (see its docstring).

`directory_grid` gives the same grid from a pipeline directory's JSON configs alone (scheduler,
VAE and transformer `config.json`, no weights), so a config's SDE window can be checked against its
model's grid before any model is loaded (SPEC §2's floor, `tpgrpo.stages.common.window_check`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SIGMA0_TOLERANCE = 1e-6
"""|σ_0 − 1| allowed: a few float32 ulps (diffusers' static-shift grids start at 1 up to rounding)."""


def scheduler_grid(
    scheduler: Any,
    retrieve_timesteps: Callable[..., Any],
    num_steps: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The σ grid `retrieve_timesteps(copy_of(scheduler), num_steps, "cpu", **kwargs)` leaves.

    Args:
        scheduler: the pipeline's scheduler (deep-copied; the original keeps its state).
        retrieve_timesteps: the pipeline module's `retrieve_timesteps` (what its `__call__` runs).
        num_steps (`int`): `T`.
        **kwargs: what `__call__` passes besides the step count (`sigmas=`, `mu=`).

    Returns:
        `torch.Tensor`: float32 `[T + 1]` on the CPU, checked by `check_grid`.
    """
    check_num_steps(num_steps)
    fresh = copy.deepcopy(scheduler)
    retrieve_timesteps(fresh, num_steps, "cpu", **kwargs)
    return check_grid(fresh.sigmas, num_steps)


def check_num_steps(num_steps: int) -> int:
    """`num_steps` if it is an integer ≥ 1; raises `ValueError` otherwise."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return num_steps


def check_grid(sigmas: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Check a grid against what the samplers assume (SPEC §1–§2) and return it as float32 CPU.

    - `T + 1` values ending in `σ_T = 0` (the final latent is noise-free);
    - strictly decreasing (every step has `σ' < σ`, `dt < 0`);
    - `σ_0 = 1` (up to `SIGMA0_TOLERANCE`): `s_0` is pure Gaussian noise, as the pipelines draw it;
    - `σ_1 < 1`: the `sde` sampler replaces `σ = 1` by `σ_1` in `sqrt(σ / (1 − σ̃))` (its guard).

    FLUX's dynamically shifted grid satisfies all four: `linspace(1, 1/T, T)` starts at `t = 1`,
    which the exponential time shift `e^μ / (e^μ + (1/t − 1))` maps to exactly 1.0 whatever `μ`.

    Args:
        sigmas (`torch.Tensor`): `[T + 1]` noise levels.
        num_steps (`int`): `T`.

    Raises:
        ValueError: the grid breaks one of the assumptions; the message names it.
    """
    out = sigmas.detach().to("cpu", torch.float32).clone()  # [T + 1]
    if tuple(out.shape) != (num_steps + 1,):
        raise ValueError(f"the scheduler grid has shape {tuple(out.shape)}, expected ({num_steps + 1},)")
    if float(out[-1]) != 0.0:
        raise ValueError(f"the scheduler grid ends at σ_T = {float(out[-1])}, expected 0")
    if not bool((out[1:] < out[:-1]).all()):
        raise ValueError(
            "the scheduler grid is not strictly decreasing (an inverted-sigma scheduler?): "
            f"{[round(float(s), 6) for s in out]}"
        )
    if abs(float(out[0]) - 1.0) > SIGMA0_TOLERANCE:
        raise ValueError(
            f"the scheduler grid starts at σ_0 = {float(out[0])!r}, not 1: the samplers start from pure "
            "noise (s_0 at σ = 1); use a scheduler whose first sigma is 1"
        )
    if num_steps >= 2 and not float(out[1]) < 1.0:
        raise ValueError(
            f"σ_1 = {float(out[1])!r} is not below 1: the sde sampler's σ = 1 guard needs σ_1 < 1"
        )
    return out


def family_grid(
    family: str, scheduler: Any, num_steps: int, latent_hw: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """The grid the family's pipeline `__call__` samples latents of `latent_hw` with.

    - `sd3` (`StableDiffusion3Pipeline`): `retrieve_timesteps(scheduler, T)` with the static
      `shift`; with `use_dynamic_shifting`, `mu = calculate_shift(patch count, base/max_image_seq_len,
      base_shift, max_shift)` (`max_shift` default 1.16, as that pipeline).
    - `flux` (`FluxPipeline`): `sigmas = np.linspace(1.0, 1/T, T)` (None when the scheduler sets
      `use_flow_sigmas`), `mu = calculate_shift(image_seq_len, …)` with `image_seq_len = (h/2)·(w/2)`
      packed patches (`max_shift` default 1.15), then `retrieve_timesteps(scheduler, T, sigmas, mu)`.

    Args:
        family (`str`): `"sd3"` or `"flux"`.
        scheduler: the pipeline's scheduler (deep-copied; the original keeps its state).
        num_steps (`int`): `T`.
        latent_hw (`tuple[int, int]`): latent height and width `(h, w)`.
        patch_size (`int`): the transformer's patch size (SD3's dynamic shift counts patches).

    Returns:
        `torch.Tensor`: float32 `[T + 1]` on the CPU, checked by `check_grid`.
    """
    import numpy as np

    check_num_steps(num_steps)
    h, w = latent_hw
    config = scheduler.config
    if family == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        sigmas: np.ndarray | None = np.linspace(1.0, 1 / num_steps, num_steps)  # [T] float64
        if config.get("use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(
            (h // 2) * (w // 2),  # the packed latents' sequence length, `latents.shape[1]`
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        return scheduler_grid(scheduler, retrieve_timesteps, num_steps, sigmas=sigmas, mu=mu)
    if family != "sd3":
        raise ValueError(f"unknown model family {family!r}; choose 'sd3' or 'flux'")
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
        calculate_shift as sd3_calculate_shift,
    )
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
        retrieve_timesteps as sd3_retrieve_timesteps,
    )

    kwargs: dict[str, Any] = {}
    if config.get("use_dynamic_shifting", None):
        kwargs["mu"] = sd3_calculate_shift(
            (h // patch_size) * (w // patch_size),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
    return scheduler_grid(scheduler, sd3_retrieve_timesteps, num_steps, **kwargs)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON config ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def directory_grid(path: str, family: str, num_steps: int, height: int, width: int) -> torch.Tensor:
    """The grid a pipeline directory's model samples a `height × width` image with, from its JSON
    configs only (no weights are read): what the loaded policy's `sigmas` returns.

    The scheduler is built from `scheduler/scheduler_config.json` (its `_class_name` in diffusers);
    the latent size from the VAE's `block_out_channels` (`vae_scale_factor = 2^(levels − 1)`, as
    the pipelines); SD3's patch size from `transformer/config.json`.

    Raises:
        ValueError: a config is missing or unreadable, names an unknown scheduler class, or the image
            size is no multiple of twice the VAE factor.
    """
    import diffusers

    root = Path(path)
    sched_cfg = _read_json(root / "scheduler" / "scheduler_config.json")
    cls = getattr(diffusers, str(sched_cfg.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{root / 'scheduler'}: unknown scheduler class {sched_cfg.get('_class_name')!r}")
    vae_cfg = _read_json(root / "vae" / "config.json")
    factor = 2 ** (len(vae_cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    if height % (factor * 2) or width % (factor * 2):
        raise ValueError(f"height and width must be multiples of {factor * 2}, got {height}×{width}")
    patch = int(_read_json(root / "transformer" / "config.json").get("patch_size", 1) or 1)
    scheduler = cls.from_config(sched_cfg)
    return family_grid(family, scheduler, num_steps, (height // factor, width // factor), patch)
