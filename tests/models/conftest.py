"""Fixtures: tiny SD3 and FLUX pipelines saved once per session, policies loaded fresh per test.

Every policy comes from `load_policy` on a `save_pretrained` directory, the path a user's
checkpoint takes. Policies are function-scoped because LoRA tests mutate the transformer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpgrpo.config import ModelConfig

from .tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, build_tiny_flux, build_tiny_sd3

FAMILIES = ("sd3", "flux")


def model_config(family: str, path: Path | str, dtype: str = "float32") -> ModelConfig:
    """The `ModelConfig` of a tiny test pipeline."""
    return ModelConfig(
        family=family,  # type: ignore[arg-type]
        path=str(path),
        dtype=dtype,  # type: ignore[arg-type]
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`{"sd3": dir, "flux": dir}`: each tiny pipeline saved with `save_pretrained` (safetensors)."""
    root = tmp_path_factory.mktemp("pipelines")
    dirs = {"sd3": root / "sd3", "flux": root / "flux"}
    build_tiny_sd3().save_pretrained(dirs["sd3"], safe_serialization=True)
    build_tiny_flux().save_pretrained(dirs["flux"], safe_serialization=True)
    return dirs


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def policy(family: str, model_dirs: dict[str, Path]) -> Any:
    """A freshly loaded float32 policy of `family`."""
    from tpgrpo.models import load_policy

    return load_policy(model_config(family, model_dirs[family]))


@pytest.fixture
def load(model_dirs: dict[str, Path]) -> Any:
    """`load(family, dtype="float32")` → a freshly loaded policy."""
    from tpgrpo.models import load_policy

    def _load(family: str, dtype: str = "float32") -> Any:
        return load_policy(model_config(family, model_dirs[family], dtype))

    return _load
