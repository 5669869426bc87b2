"""A tpgrpo LoRA in the layout other tools load: diffusers' `load_lora_weights`, and ComfyUI.

Our checkpoints keep peft's parameter names of the bare transformer
(`transformer_blocks.0.attn.to_q.lora_A.default.weight`) and alpha only in our own metadata, so
`StableDiffusion3Pipeline.load_lora_weights(checkpoints/iter=K)` finds nothing it recognises. The
exported layout:

- keys `transformer.<module>.lora_A.weight` / `transformer.<module>.lora_B.weight`: the pipeline's
  component name, the module path, peft's A (down, `[r, in]`) and B (up, `[out, r]`) without the
  adapter name. diffusers keeps the keys under `transformer.` for the transformer; ComfyUI maps the
  same keys onto its own SD3 / FLUX weights (its `comfy/lora.py`: `transformer.` + the diffusers
  module name, `lora_A`/`lora_B` read as down/up);
- **the scale folded into B**: peft applies `x ↦ W x + (alpha / r) · B A x`. A file without alpha
  entries is read as alpha = r by both loaders (diffusers' `get_peft_kwargs` sets `lora_alpha = r`
  when no `network_alphas` / `lora_adapter_metadata` is given; ComfyUI uses scale 1 when a module
  has no `.alpha` key), so we store `B' = (alpha / r) · B`: at the default strength 1.0 the loaded
  adapter adds `B' A x = (alpha / r) · B A x`, our update, whatever the loader does with alpha;
- float32 tensors (EMA and live weights are kept in float32), safetensors only.

Pure functions on tensors and bytes: no model, no storage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from tpgrpo.errors import DataError
from tpgrpo.models.lora import ADAPTER, LoraSpec, read_adapter
from tpgrpo.models.state import save_canonical

COMPONENT = "transformer"
"""The pipeline component the adapter belongs to (diffusers' `TRANSFORMER_NAME`)."""

WEIGHTS = ("ema", "live")
"""`ema`: the EMA of the LoRA weights (what `tpgrpo evaluate` samples with); `live`: the weights the
optimizer left (what the next iteration's rollouts sample with)."""

_OUR_KEY = re.compile(rf"^(?P<module>.+)\.lora_(?P<factor>[AB])\.{re.escape(ADAPTER)}\.weight$")


def checkpoint_state(files: Mapping[str, bytes], weights: str) -> tuple[dict[str, torch.Tensor], LoraSpec]:
    """The LoRA state of a checkpoint's files, live or EMA, with its spec.

    Args:
        files (`Mapping[str, bytes]`): the checkpoint's files by name (`storage.blobs.read_blobs`),
            at least `adapter.safetensors` (and `ema.safetensors` for `weights="ema"`).
        weights (`str`): `"ema"` or `"live"`.

    Returns:
        (`dict[str, torch.Tensor]`, `LoraSpec`): our keys (`<module>.lora_A.default.weight`) → float32
        tensors, and the spec from `adapter.safetensors`' metadata.

    Raises:
        ValueError: `weights` is neither `"ema"` nor `"live"`.
        DataError: a file is missing, unreadable, or the EMA does not match the adapter's keys/shapes.
        UserError: `adapter.safetensors` is not a tpgrpo adapter (`read_adapter`).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    for name in ("adapter.safetensors", *(("ema.safetensors",) if weights == "ema" else ())):
        if name not in files:
            raise DataError(f"the checkpoint has no {name}; rebuild it (rerun the update that wrote it)")
    live, spec = read_adapter(files["adapter.safetensors"])
    if weights == "live":
        return {k: v.float() for k, v in live.items()}, spec
    try:
        ema = load_safetensors(files["ema.safetensors"])
    except (SafetensorError, ValueError) as err:
        raise DataError(f"ema.safetensors is not a readable safetensors file ({err})") from err
    differ = sorted(set(live) ^ set(ema)) or [k for k in live if ema[k].shape != live[k].shape]
    if differ:
        raise DataError(
            f"ema.safetensors does not match adapter.safetensors (differs at {differ[0]!r}); "
            "rebuild the checkpoint, or export --weights live"
        )
    return {k: v.float() for k, v in ema.items()}, spec


def export_key(key: str) -> str:
    """Our key → the exported one: `m.lora_A.default.weight` → `transformer.m.lora_A.weight`.

    Raises:
        DataError: not a key of a tpgrpo LoRA state.
    """
    match = _OUR_KEY.match(key)
    if match is None:
        raise DataError(
            f"unexpected key {key!r} in the LoRA state (expected <module>.lora_A.{ADAPTER}.weight "
            f"or <module>.lora_B.{ADAPTER}.weight)"
        )
    return f"{COMPONENT}.{match['module']}.lora_{match['factor']}.weight"


def to_diffusers(state: Mapping[str, torch.Tensor], spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Convert a LoRA state to the exported layout, folding `alpha / r` into every B.

    Args:
        state (`Mapping[str, torch.Tensor]`): our keys → tensors, A `[r, in]` and B `[out, r]` of
            every adapted module (`checkpoint_state`, `lora.lora_state_dict`).
        spec (`LoraSpec`): the state's rank and alpha.

    Returns:
        `dict[str, torch.Tensor]`: `transformer.<module>.lora_A.weight` → A and
        `transformer.<module>.lora_B.weight` → `(alpha / r) · B`, float32, contiguous, on the CPU.

    Raises:
        DataError: a key of another layout, a module with only one of A and B, or a factor whose
            rank is not `spec.rank`.
    """
    scale = spec.alpha / spec.rank  # peft's `scaling`: the update is scale · B A
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = export_key(key)
        tensor = value.detach().to("cpu", torch.float32)
        rank = tensor.shape[0] if ".lora_A." in new else tensor.shape[-1]
        if tensor.ndim != 2 or rank != spec.rank:
            raise DataError(
                f"LoRA factor {key!r} has shape {tuple(tensor.shape)}, not rank {spec.rank} as its "
                "metadata says: the checkpoint is damaged; rebuild it"
            )
        if ".lora_B." in new:
            tensor = tensor * scale  # [out, r]; B' A = scale · B A
        out[new] = tensor.contiguous()
    modules = {k.rsplit(".lora_", 1)[0] for k in out}
    lonely = sorted(m for m in modules if f"{m}.lora_A.weight" not in out or f"{m}.lora_B.weight" not in out)
    if lonely:
        raise DataError(
            f"LoRA state has only one of lora_A / lora_B for {lonely[0]!r}: the checkpoint is damaged; "
            "rebuild it"
        )
    return out


def exported_bytes(tensors: Mapping[str, torch.Tensor], provenance: Mapping[str, object]) -> bytes:
    """The exported tensors as safetensors bytes (sorted header, so a function of its inputs).

    The metadata holds `format: pt` (what PyTorch-side loaders expect) and `tpgrpo_export`, a JSON
    record of where the weights come from (run, checkpoint, weights, family, rank, alpha, the
    folded scale). It deliberately holds no `lora_adapter_metadata`: diffusers would build its
    `LoraConfig` from that instead of from the tensors, and the folded scale needs alpha = r.
    """
    meta = {"format": "pt", "tpgrpo_export": json.dumps(dict(provenance), sort_keys=True)}
    return save_canonical(tensors, metadata=meta)
