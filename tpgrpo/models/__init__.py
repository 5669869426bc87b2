"""The policy: loading SD3 / FLUX diffusers pipelines, LoRA (peft), guided velocity, encode, decode.

- `policy.Policy`: the interface the stages use; `sd3.SD3Policy`, `flux.FluxPolicy` implement it.
- `factory`: `resolve_model_path` (`embedded:tiny` → the packaged checkpoint), `load_policy`.
- `pipeline`: `load_pipeline`, one `from_pretrained` loader for every family (safetensors only).
- `lora`: `add_lora`, `lora_parameters`, state dicts and safetensors bytes, `reference_mode`.
- `conditioning`, `vae`, `state`: encoded prompts; latents ↔ images; optimizer/EMA/RNG state.

Submodules import torch/diffusers; this package module only re-exports the light entry points.
"""

from __future__ import annotations

from tpgrpo.models.factory import load_policy, resolve_model_path

__all__ = ["load_policy", "resolve_model_path"]
