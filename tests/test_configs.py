"""Every file in configs/ validates, and the reference configs carry SPEC.md §6's hyper-parameters.

No model is loaded: `load_config` checks keys, types and the cross-field arithmetic; reward specs
are checked against their factory's signature (as `make_reward` does before building anything);
the SDE window is checked against SPEC §2's floor on each config's model grid, built from the
model's JSON configs (the embedded checkpoint's, or the public configs of SD3.5-Medium and
FLUX.1-dev written into a stand-in pipeline directory), and must be what the file's comment says.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tpgrpo.config import EMBEDDED_MODEL, Config, load_config
from tpgrpo.rewards import REWARDS, resolve
from tpgrpo.stages.common import config_grid, run_window, window_check

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.glob("*.yaml"))
REFERENCE = ("sd35m_geneval", "sd35m_pickscore", "sd35m_ocr", "flux_pickscore")
REWARD_OF = {
    "sd35m_geneval": "http",
    "sd35m_pickscore": "pickscore",
    "sd35m_ocr": "ocr",
    "flux_pickscore": "pickscore",
}


def _keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted key paths of a config mapping (reward.spec is one value, not a section)."""
    out: set[str] = set()
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path != "reward.spec":
            out |= _keys(value, f"{path}.")
        else:
            out.add(path)
    return out


def test_reference_configs_exist() -> None:
    assert {p.stem for p in FILES} >= {"tiny", *REFERENCE}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name.replace("-", "_") == path.stem  # the run name says which file it came from


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_configs_list_every_key_of_tiny(name: str) -> None:
    """A reference config is complete: every key the embedded default spells out is set explicitly."""
    tiny = _keys(yaml.safe_load((CONFIGS / "tiny.yaml").read_text()))
    ours = _keys(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))
    assert tiny - ours == set()


@pytest.mark.parametrize("name", REFERENCE)
def test_spec_section_6_values(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    s, r, u = cfg.sampling, cfg.rollout, cfg.update
    # T = 10 train / 40 eval; cps with a = 0.7; SPEC §2's default window (see test_window_on_the_grid)
    assert (s.num_steps, s.eval_steps, s.sampler, s.noise_level) == (10, 40, "cps", 0.7)
    assert (s.window_start, s.window_size) == (0, None)
    # G = 24, 48 prompts per iteration
    assert r.group_size == 24
    assert r.prompts_per_batch * r.batches_per_iteration == 48
    # ε = 1e-5, β = 1e-4, AdamW lr 3e-4, LoRA rank 32 / alpha 64, grad clip 1.0, EMA 0.9 every 8
    assert (u.clip_range, u.kl_beta, u.lr) == (1e-5, 1e-4, 3e-4)
    assert (u.lora_rank, u.lora_alpha, u.grad_clip) == (32, 64.0, 1.0)
    assert (u.ema_decay, u.ema_every) == (0.9, 8)
    # 512 px, bf16 on CUDA
    m = cfg.model
    assert (m.height, m.width, m.dtype, m.device) == (512, 512, "bfloat16", "cuda")
    # the reference reward mode (SPEC §5): constrained turning points, initial step, balancing
    assert (cfg.reward.mode, cfg.reward.initial_step, cfg.reward.balance) == ("tp_constrained", True, True)
    assert (cfg.advantage.std_scope, cfg.advantage.clip) == ("group", 5.0)
    # user-supplied model and prompts, not the embedded world
    assert m.path != EMBEDDED_MODEL and m.path.startswith("/models/")
    assert r.prompts not in ("train", "test")


@pytest.mark.parametrize("name", [n for n in REFERENCE if n.startswith("sd35m_")])
def test_sd35m_family_values(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.family == "sd3"
    assert cfg.model.max_sequence_length == 256
    assert cfg.sampling.guidance_scale == 4.5  # CFG 4.5


def test_flux_family_values() -> None:
    cfg = load_config(CONFIGS / "flux_pickscore.yaml")
    assert cfg.model.family == "flux"
    assert cfg.model.max_sequence_length == 512
    assert cfg.sampling.guidance_scale == 3.5  # embedded guidance of FLUX.1-dev, no CFG batch


@pytest.mark.parametrize("name", REFERENCE)
def test_reward_specs_bind_to_their_factories(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    spec = cfg.reward.spec
    assert isinstance(spec, dict) and spec["name"] == REWARD_OF[name]
    params = {k: v for k, v in spec.items() if k != "name"}
    inspect.signature(resolve(REWARDS[spec["name"]])).bind(**params)  # TypeError on a wrong key
    if spec["name"] == "pickscore":
        assert str(params["model_path"]).startswith("/models/")
        assert str(params["processor_path"]).startswith("/models/")
    if spec["name"] == "http":
        assert str(params["url"]).startswith(("http://", "https://"))


def test_tiny_is_still_the_cpu_default() -> None:
    cfg = load_config(CONFIGS / "tiny.yaml")
    assert (cfg.model.path, cfg.model.device, cfg.reward.spec) == (EMBEDDED_MODEL, "cpu", "shapes")


# The public scheduler / VAE / transformer configs that decide the grid (Hugging Face model repos
# stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev): SD3.5-M has a static
# shift of 3; FLUX.1-dev shifts dynamically by the image sequence length. Both VAEs have 4 levels
# (factor 8).
PUBLIC_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "sd3": {
        "model_index.json": {"_class_name": "StableDiffusion3Pipeline"},
        "scheduler/scheduler_config.json": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": 3.0,
        },
        "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
        "transformer/config.json": {"patch_size": 2},
    },
    "flux": {
        "model_index.json": {"_class_name": "FluxPipeline"},
        "scheduler/scheduler_config.json": {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "base_image_seq_len": 256,
            "base_shift": 0.5,
            "max_image_seq_len": 4096,
            "max_shift": 1.15,
            "num_train_timesteps": 1000,
            "shift": 3.0,
            "use_dynamic_shifting": True,
        },
        "vae/config.json": {"block_out_channels": [128, 256, 512, 512]},
        "transformer/config.json": {"patch_size": 1},
    },
}


def _stand_in(family: str, root: Path) -> Path:
    """A pipeline directory holding only the configs that decide `family`'s grid."""
    for name, data in PUBLIC_CONFIGS[family].items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_window_on_the_grid(path: Path, tmp_path: Path) -> None:
    """Every shipped config's window passes SPEC §2's floor on its model's grid, and its comment
    (`window_size: null  # SPEC §2 floor: W = N …`) states the W the rule gives there."""
    cfg = load_config(path)
    if cfg.model.path != EMBEDDED_MODEL:
        cfg = load_config(path, [f"model.path={_stand_in(cfg.model.family, tmp_path)}"])
    assert window_check(cfg) == []
    sigmas = config_grid(cfg)
    assert sigmas is not None
    window = run_window(cfg, sigmas)
    comment = re.search(r"window_size: null +# SPEC §2 floor: W = (\d+)", path.read_text())
    assert comment is not None, "the window_size comment must state the default W"
    assert window.size == int(comment.group(1))
    # cps, a = 0.7 on SD3 / SD3.5-M (shift 3, T = 10): 8 steps, step 8 (σ .278 → .0089) has std .008;
    # FLUX.1-dev at 512 px: σ_9 = .1726, so step 8 has std .154 and the window is every step but the
    # last, 9. dance (η·sqrt(σ − σ')) on SD3's grid: step 8 has std .3·sqrt(.269) = .156, W = 9
    expected = 8 if cfg.model.family == "sd3" and cfg.sampling.sampler == "cps" else 9
    assert (window.start, window.size) == (0, expected)


def test_dance_config_carries_dancegrpo_choices() -> None:
    """configs/dance_tiny.yaml: DanceGRPO's sampler, η, step fraction and shared noise on tiny's
    settings otherwise (so a comparison changes only what DanceGRPO changes)."""
    cfg = load_config(CONFIGS / "dance_tiny.yaml")
    tiny = load_config(CONFIGS / "tiny.yaml")
    assert (cfg.sampling.sampler, cfg.sampling.noise_level) == ("dance", 0.3)
    assert cfg.update.timestep_fraction == 0.6 and cfg.rollout.same_noise_per_group
    assert (cfg.reward.mode, cfg.branch.completions) == ("flow_grpo", False)
    assert (cfg.update.clip_range, cfg.advantage.clip, cfg.update.grad_clip) == (1e-4, 5.0, 1.0)
    differ = {
        f"{section}.{key}"
        for section in ("model", "sampling", "rollout", "branch", "reward", "advantage", "update")
        for key, value in getattr(cfg, section)
        if getattr(getattr(tiny, section), key) != value
    }
    assert differ == {
        "sampling.sampler",
        "sampling.noise_level",
        "rollout.same_noise_per_group",
        "branch.completions",
        "reward.mode",
        "update.timestep_fraction",
    }
    assert set(_keys(yaml.safe_load((CONFIGS / "tiny.yaml").read_text()))) <= set(
        _keys(yaml.safe_load((CONFIGS / "dance_tiny.yaml").read_text()))
    )


def test_explicit_window_under_the_floor_is_a_config_error(tmp_path: Path) -> None:
    """An explicit window with a near-deterministic step fails validation, naming step, std and fix."""
    cfg = load_config(CONFIGS / "sd35m_geneval.yaml", [f"model.path={_stand_in('sd3', tmp_path)}"])
    ok = load_config(CONFIGS / "sd35m_geneval.yaml", [f"model.path={tmp_path}", "sampling.window_size=8"])
    assert window_check(ok) == []
    bad = load_config(CONFIGS / "sd35m_geneval.yaml", [f"model.path={tmp_path}", "sampling.window_size=9"])
    (problem,) = window_check(bad)
    assert "step 8" in problem and "std 0.0080" in problem and "window_size to null" in problem
    assert window_check(cfg) == []


def test_tiny_pref_is_tiny_with_the_dense_reward() -> None:
    """tiny_pref.yaml repeats tiny.yaml's keys; only its name and reward may differ (no drift)."""
    tiny = load_config(CONFIGS / "tiny.yaml").model_dump()
    pref = load_config(CONFIGS / "tiny_pref.yaml").model_dump()
    assert (pref["name"], pref["reward"]["spec"]) == ("tiny_pref", "shapes_pref")
    for cfg in (tiny, pref):
        cfg.pop("name")
        cfg["reward"].pop("spec")
    assert pref == tiny
