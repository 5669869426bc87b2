"""Training state as safetensors + JSON: optimizer, RNG, EMA — never pickles.

`torch.save`/`torch.load` unpickle arbitrary objects; a checkpoint from shared storage must not be
able to run code. So an optimizer state is split into its tensors (one safetensors file, keys
`state.<param index>.<name>`) and everything else (param groups, scalar state) as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def save_canonical(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes that are a function of the tensors and metadata only.

    `safetensors.torch.save` writes its JSON header (tensor entries and `__metadata__`) in a
    hash-map order that varies between processes; the header is rewritten here with sorted keys and
    no whitespace (padded with spaces to 8 bytes, as the format allows). The data section, whose
    offsets the header records relative to its start, is unchanged, so any safetensors reader
    loads the result as before.
    """
    blob = save_safetensors(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + size :]


def optimizer_to_bytes(optimizer: torch.optim.Optimizer) -> tuple[bytes, str]:
    """Serialise `optimizer.state_dict()` as (safetensors bytes, JSON text)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    return save_canonical(tensors), json.dumps(meta, sort_keys=True)


def optimizer_from_bytes(optimizer: torch.optim.Optimizer, blob: bytes, meta_json: str) -> None:
    """Load a state written by `optimizer_to_bytes` into `optimizer` (same parameter layout).

    Raises:
        ValueError: the stored state is for a different number of parameter groups.
    """
    tensors = load_safetensors(blob)
    meta = json.loads(meta_json)
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"optimizer state has {len(meta['param_groups'])} parameter groups, the optimizer "
            f"{len(optimizer.param_groups)}: the checkpoint belongs to another model or config"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def seeded_rng_state(seed: int, position: int) -> dict[str, Any]:
    """The torch CPU RNG state a checkpoint stores for the update at `position` (its iteration).

    A function of the run seed and the position only, never of the process's history (what else
    drew from the global generator before): two runs, and a run resumed anywhere, store the same
    bytes and start each update from the same state. JSON-able: a list of byte values.
    """
    derived = int(np.random.SeedSequence([seed, position, 0x52_4E_47]).generate_state(1, np.uint64)[0])
    return {"torch_cpu": torch.Generator().manual_seed(derived).get_state().tolist()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a state from `rng_state`."""
    torch.set_rng_state(torch.tensor(state["torch_cpu"], dtype=torch.uint8))


class EMA:
    """Exponential moving average of a set of named parameters (kept in float32).

    Args:
        params (`dict[str, torch.Tensor]`): the live parameters to track.
        decay (`float`): `ema ← decay·ema + (1 − decay)·param` at each `update`.
    """

    def __init__(self, params: dict[str, torch.Tensor], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor]) -> None:
        for name, p in params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: dict[str, torch.Tensor]) -> None:
        """Write the averages into `params` (in their dtype)."""
        for name, p in params.items():
            p.copy_(self.shadow[name].to(p.dtype))

    def to_bytes(self) -> bytes:
        return save_canonical({k: v.contiguous() for k, v in self.shadow.items()})

    def load_bytes(self, blob: bytes) -> None:
        loaded = load_safetensors(blob)
        missing = set(self.shadow) ^ set(loaded)
        if missing:
            raise ValueError(f"EMA state does not match the parameters (differs in {sorted(missing)[:3]} …)")
        self.shadow = {k: v.float() for k, v in loaded.items()}
