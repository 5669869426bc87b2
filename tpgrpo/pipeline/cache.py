"""The policy and the rewards of a process, each built once per model config or reward spec.

A flow's tasks, the `tpgrpo stage` command and the torchrun ranks all run many steps in one
process; loading the model per step would dominate their time. The cache is keyed by the model
config's JSON (and the LoRA settings), the reward by its spec's canonical JSON.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

from tpgrpo.config import ModelConfig, SpecData

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy
    from tpgrpo.rewards.base import Reward

_INITIAL_ADAPTERS: dict[int, bytes] = {}  # id(policy) -> its adapter right after `add_lora`


@functools.lru_cache(maxsize=2)
def cached_policy(model_json: str, rank: int, alpha: float, seed: int) -> Policy:
    """The policy of `model_json` with a fresh LoRA adapter (seeded), loaded once per process."""
    from tpgrpo.models.factory import load_policy
    from tpgrpo.models.lora import adapter_to_bytes, add_lora

    policy = load_policy(ModelConfig.model_validate_json(model_json))
    add_lora(policy, rank=rank, alpha=alpha, seed=seed)
    _INITIAL_ADAPTERS[id(policy)] = adapter_to_bytes(policy.transformer)  # what checkpoint 0 holds
    return policy


def initial_adapter(policy: Policy) -> bytes:
    """The adapter `policy` had when `cached_policy` built it: what checkpoint 0 holds."""
    return _INITIAL_ADAPTERS[id(policy)]


@functools.lru_cache(maxsize=4)
def _reward(spec_json: str) -> Reward:
    from tpgrpo.rewards import make_reward

    return make_reward(json.loads(spec_json))


def cached_reward(spec: SpecData) -> Reward:
    """The reward of `spec` (a name or a mapping with `name`), built once per process."""
    return _reward(json.dumps(spec, sort_keys=True))
