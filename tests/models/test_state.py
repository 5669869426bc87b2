"""Checkpoint payloads are functions of their content: canonical safetensors, seeded RNG states."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load

from tpgrpo.models.state import EMA, save_canonical, seeded_rng_state, set_rng_state


def _header(blob: bytes) -> bytes:
    return blob[8 : 8 + int.from_bytes(blob[:8], "little")]


def test_metadata_order_does_not_change_the_bytes() -> None:
    tensors = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(4, dtype=torch.float16)}
    keys = [f"k{i:02d}" for i in range(40)]  # enough keys that a hash map's order would show
    forward = save_canonical(tensors, {k: str(i) for i, k in enumerate(keys)})
    backward = save_canonical(
        dict(reversed(tensors.items())), {k: str(keys.index(k)) for k in reversed(keys)}
    )
    assert forward == backward
    header = _header(forward)
    assert (
        len(header) % 8 == 0
        and header.rstrip(b" ")
        == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()
    )
    loaded = load(forward)
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_ema_bytes_are_canonical() -> None:
    params = {f"p{i}": torch.full((3,), float(i)) for i in range(20)}
    blob = EMA(params, 0.5).to_bytes()
    assert blob == EMA(dict(reversed(params.items())), 0.5).to_bytes()


def test_seeded_rng_state_depends_on_seed_and_position_only() -> None:
    torch.manual_seed(123)
    first = seeded_rng_state(7, 2)
    torch.rand(1000)  # the process's own history must not matter
    assert seeded_rng_state(7, 2) == first
    assert seeded_rng_state(7, 3) != first and seeded_rng_state(8, 2) != first
    before = torch.get_rng_state()
    seeded_rng_state(7, 4)
    assert torch.equal(torch.get_rng_state(), before)  # deriving a state leaves the global one alone
    set_rng_state(first)
    a = torch.rand(3)
    set_rng_state(seeded_rng_state(7, 2))
    assert torch.equal(torch.rand(3), a)
