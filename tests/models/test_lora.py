"""LoRA through peft: identity start, trainable set, training, reference mode, safetensors state."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import save as save_safetensors

from tpgrpo.errors import UserError
from tpgrpo.models.lora import (
    LoraSpec,
    adapter_from_bytes,
    adapter_to_bytes,
    add_lora,
    load_lora_state_dict,
    lora_parameters,
    lora_spec,
    lora_state_dict,
    read_adapter,
    reference_mode,
)
from tpgrpo.models.state import EMA

from .tiny import make_inputs


def _velocity(policy: Any, seed: int = 0) -> torch.Tensor:
    latents, sigma, cond, uncond = make_inputs(policy, seed=seed)
    return policy.velocity(latents, sigma, cond, uncond, 4.5)


def _train_step(policy: Any, lr: float = 0.5) -> None:
    """One SGD step on a made-up loss: moves the adapter away from the identity."""
    params = lora_parameters(policy.transformer)
    loss = (_velocity(policy) - 1.0).square().mean()
    loss.backward()
    torch.optim.SGD(list(params.values()), lr=lr).step()
    for p in params.values():
        p.grad = None


def test_starts_as_identity(policy: Any) -> None:
    base = _velocity(policy)
    params = add_lora(policy, rank=4, alpha=8.0, seed=0)
    assert params and all(p.dtype == torch.float32 for p in params.values())
    assert all(not p.any() for name, p in params.items() if ".lora_B." in name)  # B = 0
    assert all(p.any() for name, p in params.items() if ".lora_A." in name)
    assert torch.equal(_velocity(policy), base)


def test_only_lora_is_trainable(policy: Any, family: str) -> None:
    params = add_lora(policy, rank=4, alpha=8.0)
    trainable = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    assert trainable == set(params) == set(lora_parameters(policy))
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        assert not any(p.requires_grad for p in getattr(policy.pipeline, name).parameters())
    adapted = {n.split(".lora_")[0] for n in params}
    if family == "flux":
        assert "transformer_blocks.0.attn.add_q_proj" in adapted
        assert "single_transformer_blocks.0.attn.to_q" in adapted  # single blocks' attention
        assert "single_transformer_blocks.0.proj_out" not in adapted  # attention ⊕ MLP output: frozen
        assert len(adapted) == 8 + 3  # one double block (8 projections) + one single block (q/k/v)
    else:
        assert "transformer_blocks.0.attn.to_add_out" in adapted
        assert all(".attn." in n for n in adapted)


def test_gradient_step_changes_output(policy: Any) -> None:
    base = _velocity(policy)
    params = add_lora(policy, rank=4, alpha=8.0)
    loss = _velocity(policy).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in params.values())
    assert any(p.grad.abs().sum() > 0 for n, p in params.items() if ".lora_B." in n)  # type: ignore[union-attr]
    for p in params.values():
        p.grad = None
    _train_step(policy)
    assert not torch.allclose(_velocity(policy), base)


def test_reference_mode_is_the_base_model(policy: Any) -> None:
    base = _velocity(policy)
    add_lora(policy, rank=4, alpha=8.0)
    _train_step(policy)
    adapted = _velocity(policy)
    with reference_mode(policy):
        assert torch.equal(_velocity(policy), base)
        with reference_mode(policy.transformer):  # nested: still the base model
            assert torch.equal(_velocity(policy), base)
        assert torch.equal(_velocity(policy), base)
    assert torch.equal(_velocity(policy), adapted)
    assert all(p.requires_grad for p in lora_parameters(policy).values())


def test_reference_mode_restores_on_error(policy: Any) -> None:
    add_lora(policy, rank=4, alpha=8.0)
    _train_step(policy)
    adapted = _velocity(policy)
    params = lora_parameters(policy)
    frozen = next(iter(params))
    params[frozen].requires_grad_(False)  # a flag set by the caller survives the context
    with pytest.raises(RuntimeError, match="boom"), reference_mode(policy):
        raise RuntimeError("boom")
    assert torch.equal(_velocity(policy), adapted)
    assert {n for n, p in params.items() if not p.requires_grad} == {frozen}


def test_init_is_deterministic_under_the_seed(load: Any, family: str) -> None:
    a, b, c = load(family), load(family), load(family)
    rng = torch.get_rng_state()
    sa = {k: v.detach().clone() for k, v in add_lora(a, rank=4, alpha=8.0, seed=7).items()}
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    sb = add_lora(b, rank=4, alpha=8.0, seed=7)
    sc = add_lora(c, rank=4, alpha=8.0, seed=8)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if ".lora_A." in k)


def test_state_round_trip_through_bytes_is_exact(load: Any, family: str) -> None:
    source, target = load(family), load(family)
    add_lora(source, rank=4, alpha=8.0, seed=0)
    _train_step(source)
    blob = adapter_to_bytes(source)
    add_lora(target, rank=4, alpha=8.0, seed=1)  # another init: everything must be overwritten
    spec = adapter_from_bytes(target.transformer, blob)
    assert spec == lora_spec(source.transformer) == lora_spec(source)
    assert spec.family == family and spec.rank == 4 and spec.alpha == 8.0
    want, got = lora_state_dict(source), lora_state_dict(target)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) and want[k].dtype == got[k].dtype for k in want)
    assert torch.equal(_velocity(target), _velocity(source))
    state, read_spec = read_adapter(blob)
    assert read_spec == spec and all(torch.equal(state[k], want[k]) for k in want)


def test_ema_state_saves_as_adapter(policy: Any) -> None:
    params = add_lora(policy, rank=4, alpha=8.0)
    ema = EMA(params, decay=0.9)
    _train_step(policy)
    ema.update(params)
    state, _ = read_adapter(adapter_to_bytes(policy, ema.shadow))
    assert all(torch.equal(state[k], ema.shadow[k]) for k in state)
    with pytest.raises(UserError, match="does not match the adapter"):
        adapter_to_bytes(policy, dict(list(ema.shadow.items())[1:]))


def test_other_family_refused(load: Any) -> None:
    sd3, flux = load("sd3"), load("flux")
    add_lora(sd3, rank=4, alpha=8.0)
    add_lora(flux, rank=4, alpha=8.0)
    with pytest.raises(UserError, match="checkpoint was trained on a flux transformer"):
        adapter_from_bytes(sd3.transformer, adapter_to_bytes(flux))
    with pytest.raises(UserError, match="checkpoint was trained on a sd3 transformer"):
        adapter_from_bytes(flux.transformer, adapter_to_bytes(sd3))
    with pytest.raises(UserError, match="checkpoint was trained on a flux transformer, this policy is sd3"):
        load_lora_state_dict(sd3.transformer, lora_state_dict(flux))  # no metadata: told by the keys


def test_other_rank_or_alpha_refused(load: Any, family: str) -> None:
    rank4, rank8, alpha2 = load(family), load(family), load(family)
    add_lora(rank4, rank=4, alpha=8.0)
    add_lora(rank8, rank=8, alpha=8.0)
    add_lora(alpha2, rank=4, alpha=2.0)
    with pytest.raises(UserError, match="checkpoint has LoRA rank 4, this adapter rank 8"):
        adapter_from_bytes(rank8.transformer, adapter_to_bytes(rank4))
    with pytest.raises(UserError, match="checkpoint has LoRA rank 8, this adapter rank 4"):
        load_lora_state_dict(rank4.transformer, lora_state_dict(rank8))  # no metadata: told by shapes
    with pytest.raises(UserError, match="checkpoint has LoRA alpha 8, this adapter alpha 2"):
        adapter_from_bytes(alpha2.transformer, adapter_to_bytes(rank4))


def test_other_targets_refused(load: Any) -> None:
    full, qkv = load("sd3"), load("sd3")
    add_lora(full, rank=4, alpha=8.0)
    add_lora(qkv, rank=4, alpha=8.0, targets=("attn.to_q", "attn.to_k", "attn.to_v"))
    with pytest.raises(UserError, match="checkpoint adapts"):
        adapter_from_bytes(qkv.transformer, adapter_to_bytes(full))
    with pytest.raises(UserError, match=r"missing and .* unexpected keys"):
        load_lora_state_dict(full.transformer, lora_state_dict(qkv))


def test_foreign_bytes_refused(policy: Any) -> None:
    add_lora(policy, rank=4, alpha=8.0)
    with pytest.raises(UserError, match="not a tpgrpo LoRA adapter"):
        adapter_from_bytes(policy.transformer, save_safetensors(lora_state_dict(policy)))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        adapter_from_bytes(policy.transformer, b"\x00" * 7)
    meta = LoraSpec("sd3", "SD3Transformer2DModel", 4, 8.0, ("attn.to_q",)).to_metadata()
    with pytest.raises(UserError, match="format version '9'"):
        read_adapter(save_safetensors({"x": torch.zeros(1)}, metadata={**meta, "format_version": "9"}))


def test_add_lora_errors(policy: Any) -> None:
    with pytest.raises(UserError, match="has no LoRA adapter"):
        lora_parameters(policy)
    with pytest.raises(UserError, match=r"targets \['attn.nothing'\] match no module"):
        add_lora(policy, rank=4, alpha=8.0, targets=("attn.to_q", "attn.nothing"))
    with pytest.raises(UserError, match="rank ≥ 1"):
        add_lora(policy, rank=0, alpha=8.0)
    add_lora(policy, rank=4, alpha=8.0)
    with pytest.raises(UserError, match="already has a LoRA adapter"):
        add_lora(policy, rank=4, alpha=8.0)


def test_bf16_base_float32_lora(load: Any, family: str) -> None:
    policy = load(family, "bfloat16")
    base = _velocity(policy)
    params = add_lora(policy, rank=4, alpha=8.0)
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(p.dtype == torch.bfloat16 for n, p in policy.transformer.named_parameters() if n not in params)
    v = _velocity(policy)
    assert v.dtype == torch.float32 and torch.equal(v, base)
    _train_step(policy)
    moved = _velocity(policy)
    assert not torch.equal(moved, base)
    with reference_mode(policy):
        assert torch.equal(_velocity(policy), base)
