"""Load a diffusers text-to-image pipeline from a directory (or a hub id when online).

One loader for every family: the tiny embedded checkpoint, SD3 / SD3.5 and FLUX all go through
`<PipelineClass>.from_pretrained(path)`. Only safetensors weights are accepted: we never unpickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tpgrpo.errors import UserError

# family -> the diffusers pipeline class names it accepts (model_index.json `_class_name`)
FAMILIES: dict[str, tuple[str, ...]] = {
    "sd3": ("StableDiffusion3Pipeline",),
    "flux": ("FluxPipeline",),
}


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def pipeline_class_name(path: str) -> str:
    """The `_class_name` of a local pipeline directory's `model_index.json`.

    Raises:
        UserError: the directory or its `model_index.json` is missing or unreadable.
    """
    index = Path(path) / "model_index.json"
    if not Path(path).is_dir():
        raise UserError(
            f"model directory {path!r} does not exist; set model.path to a diffusers pipeline "
            "directory (the one holding model_index.json)"
        )
    if not index.is_file():
        raise UserError(
            f"{path!r} is not a diffusers pipeline directory (no model_index.json); point model.path "
            "at the folder written by save_pretrained"
        )
    try:
        name = json.loads(index.read_text())["_class_name"]
    except (json.JSONDecodeError, KeyError) as err:
        raise UserError(f"{index} is not a valid model_index.json ({err}); re-save the pipeline") from err
    return str(name)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are pickles: never loaded (a pickle from shared storage can run code)."""


def check_pipeline_dir(path: str, family: str) -> None:
    """Checks a local pipeline directory without loading it (hub ids are left to `from_pretrained`).

    A path that exists or starts with `.`, `/` or `~` is local: it must hold a `model_index.json`
    of a `family` pipeline, and every component folder with weights must have safetensors ones.

    Raises:
        UserError: a missing directory, a pipeline of another family, or pickle-only weights.
    """
    if not (Path(path).exists() or path.startswith((".", "/", "~"))):
        return
    found = pipeline_class_name(path)
    if found not in FAMILIES[family]:
        raise UserError(
            f"{path!r} holds a {found}, not a {family} pipeline ({', '.join(FAMILIES[family])}); "
            f"set model.family to match the checkpoint"
        )
    for component in sorted(p for p in Path(path).iterdir() if p.is_dir()):
        names = [f.name for f in component.iterdir() if f.is_file()]
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles and not any(n.endswith(".safetensors") for n in names):
            raise UserError(
                f"{component} holds pickle weights only ({', '.join(sorted(pickles)[:3])}); tpgrpo loads "
                "safetensors only (a pickle can run code): re-save the pipeline with "
                "save_pretrained(..., safe_serialization=True)"
            )


def load_pipeline(path: str, family: str, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load a pipeline of `family` from `path` with `from_pretrained`, all modules in eval mode.

    Args:
        path (`str`): a local pipeline directory, or a hub id (only when online).
        family (`str`): one of `FAMILIES` ("sd3", "flux").
        dtype (`str`): weights dtype, one of `DTYPES`.
        device (`str`): torch device.

    Raises:
        UserError: unknown family/dtype, missing directory, or a pipeline of another family.
    """
    if family not in FAMILIES:
        raise UserError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    check_pipeline_dir(path, family)
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components": local files, instant
    transformers.utils.logging.disable_progress_bar()  # "Loading weights"
    cls = getattr(diffusers, FAMILIES[family][0])
    pipeline = cls.from_pretrained(path, dtype=DTYPES[dtype], use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipeline, name, None)
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    return pipeline
