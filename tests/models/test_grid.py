"""The sampling grid per family and the guidance batch factor.

`policy.sigmas(T, H, W)` must be the grid the family's diffusers pipeline samples with: SD3's
static shift, FLUX's dynamic (image-size-dependent) shift. Checked bit for bit against the
scheduler state `__call__` leaves, against closed forms derived below, and end to end (ODE
samples of `stages.evaluate.sample_ode` equal the pipeline's images; stored rollout grids and
`forward_samples` of the rollout and branch stages on FLUX).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tpgrpo.algorithm import Window, flow_match_sigmas, resolve_window, sampler_step
from tpgrpo.config import load_config_data
from tpgrpo.models.flux import FluxPolicy
from tpgrpo.models.schedule import check_grid, directory_grid
from tpgrpo.models.sd3 import SD3Policy

from .tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, PROMPTS, build_tiny_flux, build_tiny_sd3

SIZES = ((32, 32), (64, 32))


def _call_grid(policy: Any, num_steps: int, height: int, width: int) -> torch.Tensor:
    """The scheduler's `sigmas` after `pipeline.__call__` set its timesteps (interrupted after step 0)."""
    pipe = policy.pipeline

    def stop(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        p._interrupt = True  # the remaining steps are skipped; the grid is already set
        return {}

    pipe(
        prompt=[PROMPTS[0]],
        height=height,
        width=width,
        num_inference_steps=num_steps,
        guidance_scale=4.5,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type="latent",
        callback_on_step_end=stop,
    )
    return pipe.scheduler.sigmas.clone()


@pytest.mark.parametrize("num_steps", [2, 5, 10])
@pytest.mark.parametrize("size", SIZES)
def test_sigmas_equal_the_pipeline_call(policy: Any, num_steps: int, size: tuple[int, int]) -> None:
    ours = policy.sigmas(num_steps, *size)
    assert ours.dtype == torch.float32 and ours.shape == (num_steps + 1,)
    assert torch.equal(ours, _call_grid(policy, num_steps, *size))
    assert float(ours[0]) == 1.0 and float(ours[-1]) == 0.0


def test_sigmas_leave_the_pipeline_scheduler_alone(policy: Any) -> None:
    scheduler = policy.pipeline.scheduler
    before = scheduler.sigmas.clone()
    policy.sigmas(7, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(scheduler.sigmas, before)


@pytest.mark.parametrize("size", [*SIZES, (128, 64)])
def test_directory_grid_equals_the_loaded_policy(
    policy: Any, family: str, model_dirs: dict[str, Path], size: tuple[int, int]
) -> None:
    """The grid read from the directory's JSON configs alone (no weights) is the loaded policy's."""
    for num_steps in (3, 10):
        grid = directory_grid(str(model_dirs[family]), family, num_steps, *size)
        assert torch.equal(grid, policy.sigmas(num_steps, *size))


def test_directory_grid_refuses_unreadable_configs(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"scheduler_config\.json"):
        directory_grid(str(tmp_path), "sd3", 10, 64, 64)
    with pytest.raises(ValueError, match="multiples"):
        directory_grid(str(model_dirs["sd3"]), "sd3", 10, 30, 64)


def test_flux_dynamic_shift_window(load: Any) -> None:
    """SPEC §2's window on FLUX's resolution-dependent grid: from the actual σ's of the image size."""
    policy = load("flux")
    factor = policy.pipeline.vae_scale_factor
    for height in (64, 1024):
        sigmas = policy.sigmas(10, height, height)
        seq_len = (height // factor // 2) ** 2
        np.testing.assert_allclose(sigmas.numpy(), _flux_closed_form(10, seq_len), rtol=0, atol=1e-6)
        # cps: step k has std σ_{k+1}·sin(0.35π); FLUX's last level σ_9 = e^mu/(e^mu + 9) ≥ .1 for any
        # mu ≥ 0 (here mu = .5 at 256 tokens … 1.15), so step 8 has std ≥ .089 and W = 9
        assert float(sigmas[9]) > 0.1
        assert resolve_window(sigmas, "cps", 0.7) == Window(0, 9)
    # a small noise level moves the floor: a = 0.1 gives std_k = σ_{k+1}·sin(.05π) = .156·σ_{k+1},
    # so only steps with σ_{k+1} ≥ .05/.156 = .32 qualify
    sigmas = policy.sigmas(10, 64, 64)
    expected = sum(1 for k in range(9) if float(sigmas[k + 1]) * math.sin(0.05 * math.pi) >= 0.05)
    assert 0 < expected < 9
    assert resolve_window(sigmas, "cps", 0.1) == Window(0, expected)


def test_sd3_grid_is_the_static_shift_grid(load: Any) -> None:
    policy = load("sd3")
    shift = policy.pipeline.scheduler.config.shift  # 3.0 in the tiny pipeline, as SD3.5
    for num_steps in (1, 10, 40):
        for size in SIZES:
            # independent of the image size: no dynamic shifting in SD3's scheduler config
            assert torch.equal(policy.sigmas(num_steps, *size), flow_match_sigmas(num_steps, shift))


def _flux_closed_form(num_steps: int, seq_len: int) -> np.ndarray:
    """FLUX's grid from its definition, in float64.

    mu is linear in the packed sequence length through (256, 0.5) and (4096, 1.15); the exponential
    time shift maps t ∈ linspace(1, 1/T, T) to e^mu / (e^mu + (1/t − 1)); σ_T = 0 is appended.
    """
    mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256)
    t = np.linspace(1.0, 1.0 / num_steps, num_steps)
    return np.append(math.exp(mu) / (math.exp(mu) + (1 / t - 1)), 0.0)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 32), (512, 512), (1024, 1024)])
def test_flux_grid_closed_form(load: Any, height: int, width: int) -> None:
    policy = load("flux")
    factor = policy.pipeline.vae_scale_factor  # 4 in the tiny pipeline (8 in FLUX.1)
    seq_len = (height // factor // 2) * (width // factor // 2)
    for num_steps in (2, 10, 40):
        sigmas = policy.sigmas(num_steps, height, width)
        expected = _flux_closed_form(num_steps, seq_len)
        np.testing.assert_allclose(sigmas.numpy(), expected, rtol=0, atol=1e-6)
        # σ_0 = 1 exactly: 1/t − 1 = 0 at t = 1, whatever mu; σ_1 < 1 keeps the sde guard valid
        assert float(sigmas[0]) == 1.0 and float(sigmas[1]) < 1.0


def test_flux_grid_depends_on_the_image_size(load: Any) -> None:
    policy = load("flux")
    small, large = policy.sigmas(10, 32, 32), policy.sigmas(10, 1024, 1024)
    # a longer sequence shifts harder towards noise: every interior level is higher
    assert bool((large[1:-1] > small[1:-1]).all())
    assert float(small[0]) == float(large[0]) == 1.0


def test_sd3_dynamic_shifting_matches_the_pipeline() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipeline = build_tiny_sd3()
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    policy = SD3Policy(pipeline, max_sequence_length=MAX_SEQUENCE_LENGTH)
    for size in SIZES:
        assert torch.equal(policy.sigmas(5, *size), _call_grid(policy, 5, *size))
    # the grid now depends on the size (mu from the patch count)
    assert not torch.equal(policy.sigmas(5, 32, 32), policy.sigmas(5, 64, 32))


def test_flux_flow_sigmas_variant_matches_the_pipeline() -> None:
    pipeline = build_tiny_flux()
    pipeline.scheduler.register_to_config(use_flow_sigmas=True)  # the pipeline then passes sigmas=None
    policy = FluxPolicy(pipeline, max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert torch.equal(policy.sigmas(4, 32, 32), _call_grid(policy, 4, 32, 32))


def test_grid_assumptions_are_enforced() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipeline = build_tiny_flux()
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipeline.scheduler.config, invert_sigmas=True
    )
    policy = FluxPolicy(pipeline, max_sequence_length=MAX_SEQUENCE_LENGTH)
    with pytest.raises(ValueError, match="σ_T"):  # inverted: 0 … 1, then a terminal 1
        policy.sigmas(4, 32, 32)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="num_steps"):
            policy.sigmas(bad, 32, 32)
    with pytest.raises(ValueError, match="multiples"):
        policy.sigmas(4, 30, 32)
    good = torch.tensor([1.0, 0.6, 0.2, 0.0])
    assert torch.equal(check_grid(good, 3), good)
    with pytest.raises(ValueError, match="σ_0"):
        check_grid(torch.tensor([0.9, 0.6, 0.2, 0.0]), 3)
    with pytest.raises(ValueError, match="σ_T"):
        check_grid(torch.tensor([1.0, 0.6, 0.2, 0.1]), 3)
    with pytest.raises(ValueError, match="not strictly decreasing"):
        check_grid(torch.tensor([1.0, 0.6, 0.6, 0.0]), 3)
    with pytest.raises(ValueError, match="shape"):
        check_grid(good, 4)
    with pytest.raises(ValueError, match="σ_1"):
        # σ_0 = 1 + 1 ulp and σ_1 = 1: decreasing, but the sde guard would divide by zero
        check_grid(torch.tensor([np.nextafter(np.float32(1), np.float32(2)), 1.0, 0.0]), 2)


def test_flux_sde_first_step_uses_the_guard(load: Any) -> None:
    """At σ_0 = 1 the sde std is a·sqrt(σ / (1 − σ_1)) (SPEC §2), finite on FLUX's grid."""
    policy = load("flux")
    sigmas = policy.sigmas(10, 64, 64)
    s1 = float(sigmas[1])
    gen = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(2, 16, 4, 4, generator=gen) for _ in range(3))
    out = sampler_step("sde", x, v, float(sigmas[0]), s1, noise_level=0.7, sigma_guard=s1, noise=eps)
    # step std = a·sqrt(σ / (1 − σ̃))·sqrt(−dt) with σ = 1, σ̃ = σ_1, −dt = 1 − σ_1: exactly a
    assert 0 < s1 < 1
    torch.testing.assert_close(out.std, torch.full((2,), 0.7), rtol=1e-6, atol=0)
    assert out.log_prob is not None and torch.isfinite(out.log_prob).all()


def test_guidance_doubles_batch_per_family(policy: Any) -> None:
    assert policy.guidance_doubles_batch is {"sd3": True, "flux": False}[policy.family]


def test_eval_samples_equal_the_pipeline(policy: Any) -> None:
    """`sample_ode` on the policy's grid gives the pipeline's own images, at a non-square size."""
    from tpgrpo.stages.evaluate import sample_ode

    height, width, steps, seeds = 64, 32, 4, [11, 12]
    ours = sample_ode(
        policy, list(PROMPTS[:2]), seeds, num_steps=steps, guidance_scale=4.5, height=height, width=width
    )  # [B, H, W, 3] uint8
    c, h, w = policy.latent_shape(height, width)
    noise = torch.stack([torch.randn((c, h, w), generator=torch.Generator().manual_seed(s)) for s in seeds])
    pipe = policy.pipeline
    latents = pipe._pack_latents(noise, 2, c, h, w) if policy.family == "flux" else noise
    expected = pipe(
        prompt=list(PROMPTS[:2]),
        latents=latents,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=4.5,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
        output_type="np",
    ).images  # [B, H, W, 3] float in [0, 1]
    assert ours.shape == expected.shape == (2, height, width, 3)
    assert np.abs(ours / 255.0 - expected).max() <= 0.5 / 255 + 1e-5  # rounding to uint8 only


# --- stages: stored grid and forward counts ----------------------------------------------------


@contextmanager
def counted_samples(transformer: Any) -> Iterator[list[int]]:
    """Count the samples (batch rows) of every transformer forward inside the block."""
    seen: list[int] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        seen.append(int(kwargs["hidden_states"].shape[0]))

    handle = transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("reuse", [True, False])
def test_stage_grid_and_forward_samples(
    family: str, model_dirs: dict[str, Path], tmp_path: Path, reuse: bool
) -> None:
    from tpgrpo.models import load_policy
    from tpgrpo.stages import branch, rollout
    from tpgrpo.stages.prompts import read_prompt_source
    from tpgrpo.storage import finalize_dataset, read_table, write_dataset

    cfg = load_config_data(
        {
            "model": {
                "family": family,
                "path": str(model_dirs[family]),
                "height": 64,
                "width": 32,
                "max_sequence_length": MAX_SEQUENCE_LENGTH,
            },
            "sampling": {"num_steps": 4, "guidance_scale": 3.5},
            "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 1, "group_size": 2},
            "branch": {"chunk_size": 3, "reuse_rollout_velocity": reuse},
            "update": {"optimizer_steps": 2},
            "storage": {"root": str(tmp_path / "runs")},
        }
    )
    policy = load_policy(cfg.model)
    rows = read_prompt_source("train")
    prompts = str(tmp_path / "prompts")
    cols = {k: [r[k] for r in rows] for k in ("prompt_id", "prompt", "task", "spec", "split")}
    write_dataset(prompts, "prompts", cols, inputs={}, config_hash="t")
    factor = 2 if family == "sd3" else 1  # SD3's CFG batch [uncond; cond]; FLUX embeds guidance

    out = str(tmp_path / "rollouts")
    with counted_samples(policy.transformer) as seen:
        stats = rollout.run_shard(cfg, policy, run_id="r", iteration=0, prompts_uri=prompts, output=out)
    finalize_dataset(out, "rollouts", inputs={}, config_hash="t")
    assert stats["model_evals"] == 4 * cfg.sampling.num_steps  # 4 trajectories × T
    assert stats["forward_samples"] == factor * stats["model_evals"] == sum(seen)
    table = read_table(out, "rollouts")
    expected = policy.sigmas(cfg.sampling.num_steps, 64, 32).tolist()
    assert all(s == expected for s in table.column("sigmas").to_pylist())

    with counted_samples(policy.transformer) as seen:
        stats = branch.run_shard(cfg, policy, iteration=0, rollouts_uri=out, output=str(tmp_path / "b"))
    assert stats["forward_samples"] == factor * stats["model_evals"] == sum(seen)
