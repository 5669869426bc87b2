"""The exported LoRA layout (`tpgrpo.models.export`) loads in diffusers and applies exactly our update.

Unit tests pin the key mapping and the folded scale on hand-made tensors. The integration tests
load the export with the real client, `<Pipeline>.from_pretrained(dir).load_lora_weights(export)`,
on the tiny SD3 and FLUX pipelines, and compare with our policy carrying the same adapter:

- the transformer's output on the same inputs agrees to atol 1e-5 (measured: 5.1e-7 SD3, 4.8e-7
  FLUX, float32 rounding of `(s·B)·(A x)` against `s·(B·(A x))`), while the adapter moves the
  output by ~0.6 (so the comparison is not base against base);
- the pipeline's own sampling (`pipe(prompt, generator=Generator().manual_seed(seed))`) reproduces
  `stages.evaluate.sample_ode` from the same seed, the images within 2/255 (measured: 0.5/255 for
  both families, the pipeline's float image against our uint8 one: rounding only): the noise of a
  batch of one is the same draw, and the sampling loop is the pipeline's (`test_pipeline_parity`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from tpgrpo.errors import DataError
from tpgrpo.models.export import checkpoint_state, export_key, exported_bytes, to_diffusers
from tpgrpo.models.lora import (
    LoraSpec,
    adapter_to_bytes,
    add_lora,
    lora_parameters,
    lora_spec,
    lora_state_dict,
)
from tpgrpo.models.state import EMA

from .tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, PROMPTS, make_inputs

PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
SPEC = LoraSpec(family="sd3", transformer="SD3Transformer2DModel", rank=2, alpha=3.0, targets=("attn.to_q",))


def test_export_key_adds_the_component_and_drops_the_adapter_name() -> None:
    assert (
        export_key("transformer_blocks.0.attn.to_out.0.lora_A.default.weight")
        == "transformer.transformer_blocks.0.attn.to_out.0.lora_A.weight"
    )
    assert (
        export_key("single_transformer_blocks.0.attn.to_q.lora_B.default.weight")
        == "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight"
    )
    for bad in ("transformer_blocks.0.attn.to_q.weight", "m.lora_A.other.weight", "m.lora_C.default.weight"):
        with pytest.raises(DataError, match="unexpected key"):
            export_key(bad)


def test_scale_is_folded_into_b_only() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [r=2, in=3]
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # [out=2, r=2]
    out = to_diffusers({"m.lora_A.default.weight": a, "m.lora_B.default.weight": b}, SPEC)
    assert sorted(out) == ["transformer.m.lora_A.weight", "transformer.m.lora_B.weight"]
    torch.testing.assert_close(out["transformer.m.lora_A.weight"], a, rtol=0, atol=0)
    # alpha / r = 3 / 2: B' = 1.5·B, so B'A = 1.5·BA, peft's update with scaling alpha / r
    torch.testing.assert_close(out["transformer.m.lora_B.weight"], torch.tensor([[1.5, 0.0], [0.0, 3.0]]))
    torch.testing.assert_close(out["transformer.m.lora_B.weight"] @ a, 1.5 * (b @ a))


def test_damaged_states_are_refused() -> None:
    a, b = torch.ones(2, 3), torch.ones(2, 2)
    with pytest.raises(DataError, match=re.escape("only one of lora_A / lora_B for 'transformer.m'")):
        to_diffusers({"m.lora_A.default.weight": a}, SPEC)
    with pytest.raises(DataError, match="not rank 2"):
        to_diffusers({"m.lora_A.default.weight": torch.ones(3, 3), "m.lora_B.default.weight": b}, SPEC)


def test_exported_bytes_carry_provenance_and_no_alpha() -> None:
    tensors = to_diffusers(
        {"m.lora_A.default.weight": torch.ones(2, 3), "m.lora_B.default.weight": torch.ones(2, 2)}, SPEC
    )
    blob = exported_bytes(tensors, {"run": "r1", "checkpoint": 2})
    assert exported_bytes(tensors, {"checkpoint": 2, "run": "r1"}) == blob  # deterministic bytes
    assert set(load_safetensors(blob)) == set(tensors)  # no alpha entries: loaders take alpha = r
    size = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + size])["__metadata__"]
    assert meta["format"] == "pt" and "lora_adapter_metadata" not in meta
    assert json.loads(meta["tpgrpo_export"]) == {"run": "r1", "checkpoint": 2}


def _trained(policy: Any, rank: int = 4, alpha: float = 6.0, seed: int = 1) -> None:
    """Give `policy` an adapter with non-zero A and B (as after training), deterministic under `seed`."""
    add_lora(policy, rank=rank, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(policy).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_checkpoint_state_reads_live_or_ema(load: Any) -> None:
    policy = load("sd3")
    _trained(policy)
    live = lora_state_dict(policy)
    ema = EMA(lora_parameters(policy), 0.5)
    ema.shadow = {k: v * 0.25 for k, v in ema.shadow.items()}
    files = {"adapter.safetensors": adapter_to_bytes(policy), "ema.safetensors": ema.to_bytes()}
    got_live, spec = checkpoint_state(files, "live")
    got_ema, _ = checkpoint_state(files, "ema")
    assert spec == lora_spec(policy)
    for k, v in live.items():
        torch.testing.assert_close(got_live[k], v, rtol=0, atol=0)
        torch.testing.assert_close(got_ema[k], 0.25 * v, rtol=0, atol=0)
    with pytest.raises(DataError, match=re.escape("no ema.safetensors")):
        checkpoint_state({"adapter.safetensors": files["adapter.safetensors"]}, "ema")
    shorter = EMA(dict(list(lora_parameters(policy).items())[:-1]), 0.5)
    with pytest.raises(DataError, match=re.escape("does not match adapter.safetensors")):
        checkpoint_state({**files, "ema.safetensors": shorter.to_bytes()}, "ema")


def _export(policy: Any, out: Path) -> Path:
    """Write `policy`'s adapter as `out/pytorch_lora_weights.safetensors` (beside a README, as the
    command does, so `load_lora_weights(out)` has to pick the weights file itself)."""
    out.mkdir()
    tensors = to_diffusers(lora_state_dict(policy), lora_spec(policy))
    (out / "pytorch_lora_weights.safetensors").write_bytes(exported_bytes(tensors, {"test": True}))
    (out / "README.md").write_text("model card\n")
    return out


def _diffusers_policy(family: str, model_dir: Path, export: Path) -> Any:
    """A policy around `<Pipeline>.from_pretrained(model_dir)` with `load_lora_weights(export)`:
    diffusers' own loading, our wrapper only to feed the same inputs."""
    import diffusers

    from tpgrpo.models.flux import FluxPolicy
    from tpgrpo.models.sd3 import SD3Policy

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(export))
    wrapper = SD3Policy if family == "sd3" else FluxPolicy
    return wrapper(pipe, max_sequence_length=MAX_SEQUENCE_LENGTH)


def test_diffusers_loads_the_export_and_applies_our_update(
    family: str, load: Any, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    ours = load(family)
    _trained(ours)
    theirs = _diffusers_policy(family, model_dirs[family], _export(ours, tmp_path / "lora"))
    assert theirs.pipeline.get_list_adapters() == {"transformer": ["default_0"]}
    latents, sigma, cond, _ = make_inputs(ours, batch=3)
    with torch.no_grad():
        expected = ours.forward(latents, sigma, cond)  # [B, C, h, w]
        got = theirs.forward(latents, sigma, cond)
        base = load(family).forward(latents, sigma, cond)
    assert (expected - base).abs().max() > 0.1  # the adapter changes the output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_pipeline_sampling_reproduces_our_samples(
    family: str, load: Any, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """What a user runs: the pipeline's `__call__` with a seeded generator, one prompt at a time."""
    from tpgrpo.stages.evaluate import sample_ode

    ours = load(family)
    _trained(ours, seed=2)
    theirs = _diffusers_policy(family, model_dirs[family], _export(ours, tmp_path / "lora"))
    steps, guidance, seeds = 3, 4.5, [11, 12]
    expected = sample_ode(
        ours,
        list(PROMPTS[:2]),
        seeds,
        num_steps=steps,
        guidance_scale=guidance,
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
    )  # [B, H, W, 3] uint8
    for prompt, seed, image in zip(PROMPTS[:2], seeds, expected, strict=True):
        got = theirs.pipeline(
            prompt=prompt,
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).images[0]  # [H, W, 3] float in [0, 1]
        diff = np.abs(got * 255.0 - image.astype(np.float64)).max()
        assert diff <= 2.0, f"{family} seed {seed}: max pixel difference {diff:.3f}/255"
