"""From a `ModelConfig` to a `Policy`: resolve the model path, load the pipeline, wrap it.

`resolve_model_path` is import-light (no torch / diffusers) so config validation can call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tpgrpo.config import EMBEDDED_MODEL
from tpgrpo.errors import UserError

if TYPE_CHECKING:
    from tpgrpo.config import ModelConfig
    from tpgrpo.models.policy import Policy

EMBEDDED_PREFIX = "embedded:"


def embedded_checkpoint_dir() -> Path:
    """Where the tiny pretrained checkpoint lives inside the package (`tpgrpo/world/checkpoint`).

    Found from the package's root, not by importing `tpgrpo.world` (which imports `models`).
    """
    import tpgrpo

    return Path(tpgrpo.__file__).resolve().parent / "world" / "checkpoint"


def resolve_model_path(path: str) -> str:
    """`model.path` → what `from_pretrained` gets.

    `"embedded:tiny"` is the package's `tpgrpo/world/checkpoint` directory; a local path gets `~`
    expanded; anything else (a hub id) is returned as is.

    Raises:
        UserError: an unknown `embedded:` name, or the embedded checkpoint is not installed.
    """
    if path.startswith(EMBEDDED_PREFIX):
        if path != EMBEDDED_MODEL:
            raise UserError(f"unknown embedded model {path!r}; the embedded model is {EMBEDDED_MODEL!r}")
        directory = embedded_checkpoint_dir()
        if not (directory / "model_index.json").is_file():
            raise UserError(
                f"the embedded tiny checkpoint is not installed ({directory} has no model_index.json); "
                "run `tpgrpo` pretraining to build it, or set model.path to a diffusers pipeline directory"
            )
        return str(directory)
    if path.startswith("~"):
        return str(Path(path).expanduser())
    return path


def load_policy(model_cfg: ModelConfig) -> Policy:
    """Load the policy `model_cfg` describes: `SD3Policy` or `FluxPolicy` by `model_cfg.family`.

    Args:
        model_cfg (`ModelConfig`): family, path (directory, hub id or `embedded:tiny`), dtype,
            device, `max_sequence_length` (T5 tokens), height/width (checked against the model).

    Raises:
        UserError: a device this machine lacks, a missing/unknown path, a checkpoint of another
            family, or an image size the model cannot take.
    """
    from tpgrpo.models.devices import check_device
    from tpgrpo.models.pipeline import load_pipeline

    check_device(model_cfg.device)
    path = resolve_model_path(model_cfg.path)
    pipeline = load_pipeline(path, model_cfg.family, dtype=model_cfg.dtype, device=model_cfg.device)
    policy: Policy
    if model_cfg.family == "flux":
        from tpgrpo.models.flux import FluxPolicy

        policy = FluxPolicy(pipeline, max_sequence_length=model_cfg.max_sequence_length)
    else:
        from tpgrpo.models.sd3 import SD3Policy

        policy = SD3Policy(pipeline, max_sequence_length=model_cfg.max_sequence_length)
    try:
        policy.latent_shape(model_cfg.height, model_cfg.width)
    except ValueError as err:
        raise UserError(f"model.height/width do not fit {path!r}: {err}") from err
    return policy
