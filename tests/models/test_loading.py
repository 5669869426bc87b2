"""Loading: `load_pipeline` / `load_policy` from saved directories, and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tpgrpo.config import EMBEDDED_MODEL
from tpgrpo.errors import UserError
from tpgrpo.models import factory, load_policy, resolve_model_path
from tpgrpo.models.flux import FluxPolicy
from tpgrpo.models.pipeline import load_pipeline
from tpgrpo.models.policy import Policy
from tpgrpo.models.sd3 import SD3Policy

from .conftest import model_config
from .tiny import IMAGE_SIZE

CLASSES = {"sd3": ("StableDiffusion3Pipeline", SD3Policy), "flux": ("FluxPipeline", FluxPolicy)}


def test_load_pipeline_from_saved_dir(family: str, model_dirs: dict[str, Path]) -> None:
    pipeline = load_pipeline(str(model_dirs[family]), family)
    assert type(pipeline).__name__ == CLASSES[family][0]
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipeline, name)
        assert not any(m.training for m in module.modules()), f"{name} not in eval mode"
        assert not any(p.requires_grad for p in module.parameters()), f"{name} not frozen"


def test_load_policy_picks_the_family(policy: Any, family: str) -> None:
    assert isinstance(policy, CLASSES[family][1])
    assert isinstance(policy, Policy)
    assert policy.family == family
    assert policy.dtype == torch.float32
    assert policy.device == torch.device("cpu")


def test_latent_shape(policy: Any, family: str) -> None:
    channels = {"sd3": 4, "flux": 16}[family]
    assert policy.latent_shape(IMAGE_SIZE, IMAGE_SIZE) == (channels, 8, 8)  # 4× VAE
    assert policy.latent_shape(16, 48) == (channels, 4, 12)
    with pytest.raises(ValueError, match="multiples of 8"):
        policy.latent_shape(20, 32)  # latents of 5 × 8: no 2×2 patches


def test_wrong_family_directory_refused(model_dirs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"holds a FluxPipeline, not a sd3 pipeline.*model\.family"):
        load_policy(model_config("sd3", model_dirs["flux"]))
    with pytest.raises(UserError, match="holds a StableDiffusion3Pipeline, not a flux pipeline"):
        load_policy(model_config("flux", model_dirs["sd3"]))


def test_missing_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_policy(model_config("sd3", tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"no model_index\.json"):
        load_policy(model_config("flux", tmp_path))


def test_corrupt_model_index_refused(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match=r"not a valid model_index\.json"):
        load_policy(model_config("sd3", tmp_path))


def test_image_size_checked_on_load(model_dirs: dict[str, Path]) -> None:
    cfg = model_config("flux", model_dirs["flux"]).model_copy(update={"height": 36})
    with pytest.raises(UserError, match=r"model.height/width do not fit.*multiples of 8"):
        load_policy(cfg)


def test_resolve_embedded_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "checkpoint"
    monkeypatch.setattr(factory, "embedded_checkpoint_dir", lambda: checkpoint)
    with pytest.raises(UserError, match="embedded tiny checkpoint is not installed"):
        resolve_model_path(EMBEDDED_MODEL)
    checkpoint.mkdir()
    (checkpoint / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    assert resolve_model_path(EMBEDDED_MODEL) == str(checkpoint)


def test_embedded_checkpoint_is_the_package_dir() -> None:
    import tpgrpo.world

    assert factory.embedded_checkpoint_dir() == Path(tpgrpo.world.__file__).resolve().parent / "checkpoint"


def test_resolve_other_paths() -> None:
    with pytest.raises(UserError, match="unknown embedded model 'embedded:huge'"):
        resolve_model_path("embedded:huge")
    assert resolve_model_path("/data/sd35m") == "/data/sd35m"
    assert resolve_model_path("stabilityai/stable-diffusion-3.5-medium") == (
        "stabilityai/stable-diffusion-3.5-medium"
    )
    assert resolve_model_path("~/models/x") == str(Path("~/models/x").expanduser())


def test_modules_in_eval_mode(policy: Any) -> None:
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert not getattr(policy.pipeline, name).training


def test_load_policy_resolves_embedded(model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "embedded_checkpoint_dir", lambda: model_dirs["sd3"])
    policy = load_policy(model_config("sd3", EMBEDDED_MODEL))
    assert isinstance(policy, SD3Policy)
    assert policy.pipeline.name_or_path == str(model_dirs["sd3"])


@pytest.mark.skipif(
    not (factory.embedded_checkpoint_dir() / "model_index.json").is_file(),
    reason="the embedded tiny checkpoint is not built yet",
)
def test_shipped_embedded_checkpoint_loads_with_the_default_config() -> None:
    from tpgrpo.config import ModelConfig

    policy = load_policy(ModelConfig())
    assert isinstance(policy, SD3Policy)
    assert policy.decode(torch.zeros(1, *policy.latent_shape(64, 64))).shape == (1, 64, 64, 3)
