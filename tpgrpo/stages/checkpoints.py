"""Policy checkpoints: the LoRA adapter, optimizer, EMA and step state of one iteration.

`checkpoints/iter=K/` holds what iteration `K` samples with and what its update resumes from:

| file | content |
|---|---|
| `adapter.safetensors` | live LoRA weights (with family/rank/targets metadata) |
| `ema.safetensors` | EMA of the LoRA weights (what evaluation uses) |
| `optimizer.safetensors` + `optimizer.json` | AdamW state: tensors, and param groups/scalars |
| `state.json` | iteration, optimizer step, torch RNG state (a function of seed and iteration) |

`iter=0000` is written at run start: the freshly initialised adapter (identity: LoRA's B = 0), so
every iteration reads one checkpoint and its update writes the next. Only safetensors and JSON:
nothing is unpickled.

Every file is a deterministic function of the run's inputs: safetensors headers are written with
sorted keys (`save_canonical`), JSON with sorted keys, and the stored RNG state is derived from
the run seed and the iteration (`seeded_rng_state`), not read from the process. Two runs of one
config and seed, and a run resumed anywhere, write byte-identical checkpoints, so their lineage
hashes (over the files' checksums) agree and a rebuilt checkpoint that equals the old one leaves
every later iteration valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from tpgrpo.config import Config
from tpgrpo.errors import DataError
from tpgrpo.models.lora import adapter_from_bytes, adapter_to_bytes, lora_parameters
from tpgrpo.models.state import (
    EMA,
    optimizer_from_bytes,
    optimizer_to_bytes,
    seeded_rng_state,
    set_rng_state,
)
from tpgrpo.storage.blobs import BlobManifest, read_blobs, write_blobs

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy


@dataclass
class TrainState:
    """What an update needs besides the weights."""

    iteration: int
    optimizer_step: int
    rng: dict[str, Any]


def make_optimizer(cfg: Config, policy: Policy) -> torch.optim.Optimizer:
    """AdamW over the LoRA parameters (the only trainable ones)."""
    params = list(lora_parameters(policy.transformer).values())
    return torch.optim.AdamW(params, lr=cfg.update.lr, weight_decay=cfg.update.weight_decay)


def write_checkpoint(
    uri: str,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    *,
    inputs: Mapping[str, str],
    config_hash: str,
    storage_options: Mapping[str, Any] | None = None,
) -> BlobManifest:
    """Write a complete checkpoint (manifest last)."""
    opt_blob, opt_meta = optimizer_to_bytes(optimizer)
    files = {
        "adapter.safetensors": adapter_to_bytes(policy.transformer),
        "ema.safetensors": ema.to_bytes(),
        "optimizer.safetensors": opt_blob,
        "optimizer.json": opt_meta.encode(),
        "state.json": json.dumps(
            {"iteration": state.iteration, "optimizer_step": state.optimizer_step, "rng": state.rng},
            sort_keys=True,
        ).encode(),
    }
    meta = {"iteration": state.iteration, "optimizer_step": state.optimizer_step, "family": policy.family}
    return write_blobs(
        uri, files, inputs=inputs, config_hash=config_hash, meta=meta, storage_options=storage_options
    )


def initial_state(cfg: Config, policy: Policy) -> tuple[torch.optim.Optimizer, EMA, TrainState]:
    """Optimizer, EMA and state of a fresh adapter (iteration 0)."""
    optimizer = make_optimizer(cfg, policy)
    ema = EMA(lora_parameters(policy.transformer), cfg.update.ema_decay)
    return optimizer, ema, TrainState(iteration=0, optimizer_step=0, rng=seeded_rng_state(cfg.seed, 0))


@contextmanager
def _readable(uri: str, name: str) -> Iterator[None]:
    """A checkpoint file that does not parse (not safetensors, not our JSON) is a `DataError`."""
    try:
        yield
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DataError(
            f"{uri}: {name} is not a readable checkpoint file ({type(err).__name__}: {str(err)[:200]}); "
            "only safetensors and JSON are loaded: rerun the update that wrote it (--force)"
        ) from err


def load_adapter(
    uri: str, policy: Policy, *, ema: bool = False, storage_options: Mapping[str, Any] | None = None
) -> BlobManifest:
    """Load the live (or, with `ema`, the EMA) LoRA weights of a checkpoint into `policy`."""
    manifest, files = read_blobs(uri, storage_options)
    adapter_from_bytes(policy.transformer, files["adapter.safetensors"])
    if ema:
        averaged = EMA(lora_parameters(policy.transformer), 0.0)
        with _readable(uri, "ema.safetensors"):
            averaged.load_bytes(files["ema.safetensors"])
        averaged.copy_to(lora_parameters(policy.transformer))
    return manifest


def load_checkpoint(
    uri: str, cfg: Config, policy: Policy, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[torch.optim.Optimizer, EMA, TrainState, BlobManifest]:
    """Load everything an update resumes from: adapter into `policy`, optimizer, EMA, state."""
    manifest, files = read_blobs(uri, storage_options)
    adapter_from_bytes(policy.transformer, files["adapter.safetensors"])
    optimizer = make_optimizer(cfg, policy)
    with _readable(uri, "optimizer.safetensors / optimizer.json"):
        optimizer_from_bytes(optimizer, files["optimizer.safetensors"], files["optimizer.json"].decode())
    for group in optimizer.param_groups:  # the config is the source of truth for hyper-parameters
        group["lr"] = cfg.update.lr
        group["weight_decay"] = cfg.update.weight_decay
    ema = EMA(lora_parameters(policy.transformer), cfg.update.ema_decay)
    with _readable(uri, "ema.safetensors"):
        ema.load_bytes(files["ema.safetensors"])
    with _readable(uri, "state.json"):
        raw = json.loads(files["state.json"])
        state = TrainState(
            iteration=int(raw["iteration"]), optimizer_step=int(raw["optimizer_step"]), rng=raw["rng"]
        )
        set_rng_state(state.rng)
    return optimizer, ema, state, manifest
