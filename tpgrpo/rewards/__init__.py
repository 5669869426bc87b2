"""The reward registry: name -> factory taking keyword parameters.

`make_reward("shapes")` or `make_reward({"name": "shapes", **params})` builds a `Reward`. A
factory imports its module only when called, so listing or validating rewards stays cheap; adding
a reward is one line: `"name": lazy("tpgrpo.rewards.module:Factory")`. `check_spec` and `spec_key`
check a spec and give its storage key without building the reward (no weights, no device).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from tpgrpo.errors import UserError
from tpgrpo.rewards.base import Reward, RewardResult

__all__ = ["REWARDS", "Reward", "RewardResult", "check_spec", "lazy", "make_reward", "spec_key"]


def lazy(target: str) -> Callable[..., Reward]:
    """A factory that imports `"package.module:name"` when called and calls it with the params.

    Args:
        target (`str`): where the real factory (a class or function) lives.

    Returns:
        `Callable[..., Reward]`: the lazy factory; `resolve(factory)` gives the real one.
    """
    module, _, name = target.partition(":")

    def factory(**params: Any) -> Reward:
        real: Callable[..., Reward] = getattr(importlib.import_module(module), name)
        return real(**params)

    factory.__qualname__ = factory.__name__ = f"lazy({target})"
    factory.lazy_target = target  # type: ignore[attr-defined]
    return factory


def resolve(factory: Callable[..., Reward]) -> Callable[..., Reward]:
    """The real factory behind a `lazy` one (imports its module), or the factory itself."""
    target = getattr(factory, "lazy_target", None)
    if target is None:
        return factory
    module, _, name = target.partition(":")
    real: Callable[..., Reward] = getattr(importlib.import_module(module), name)
    return real


REWARDS: dict[str, Callable[..., Reward]] = {
    "shapes": lazy("tpgrpo.rewards.shapes:ShapesReward"),
    "shapes_pref": lazy("tpgrpo.rewards.shapes_pref:ShapesPrefReward"),
    "pickscore": lazy("tpgrpo.rewards.clip:pickscore"),
    "clipscore": lazy("tpgrpo.rewards.clip:clipscore"),
    "ocr": lazy("tpgrpo.rewards.ocr:OcrReward"),
    "jpeg": lazy("tpgrpo.rewards.jpeg:jpeg_compressibility"),
    "jpeg_incompressibility": lazy("tpgrpo.rewards.jpeg:jpeg_incompressibility"),
    "http": lazy("tpgrpo.rewards.http:HttpReward"),
    "weighted": lazy("tpgrpo.rewards.weighted:WeightedReward"),
}
"""Registered rewards: name -> factory(**params)."""


def check_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and parameters of a reward spec, checked against the registry without building it.

    Imports the factory's module (for its signature), never its model: cheap on any machine, so an
    orchestrator checks a spec whose reward runs on another one (a GPU worker).

    Args:
        spec (`str | Mapping`): a name (`"shapes"`) or `{"name": "shapes", **params}`.

    Returns:
        `(str, dict)`: the registered name and the parameters.

    Raises:
        `UserError`: no name, an unknown name (lists the registered ones) or parameters the
            factory does not take (lists the ones it takes).
    """
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"a reward spec needs a string 'name' key, got {dict(spec)!r}")
    else:
        raise UserError(f"a reward spec is a name or a mapping with 'name', got {spec!r}")
    if name not in REWARDS:
        raise UserError(f"unknown reward {name!r}; registered rewards: {list(REWARDS)}")
    signature = inspect.signature(resolve(REWARDS[name]))
    try:
        signature.bind(**params)
    except TypeError as e:
        takes = [p for p in signature.parameters if p != "self"] or "no parameters"
        raise UserError(f"reward {name!r}: bad parameters {sorted(params)} ({e}); it takes {takes}") from e
    return name, params


def spec_key(spec: str | Mapping[str, Any]) -> str:
    """The storage key the reward of `spec` has, without building it (see `check_spec`).

    The `key` parameter when the spec gives one, else the factory's default `key` (its signature's,
    or a class's `key` attribute), else the registered name. A built reward must carry this key
    (`pipeline.context.RunContext.reward` checks it), so a factory whose key depends on anything
    else cannot be registered.

    Raises:
        `UserError`: what `check_spec` refuses, or a `key` that is not a non-empty string.
    """
    name, params = check_spec(spec)
    key = params.get("key")
    if key is None:
        real = resolve(REWARDS[name])
        default = inspect.signature(real).parameters.get("key")
        key = default.default if default is not None else getattr(real, "key", None)
        key = key if isinstance(key, str) and key else name
    if not isinstance(key, str) or not key:
        raise UserError(f"reward {name!r}: key must be a non-empty string, got {key!r}")
    return key


def make_reward(spec: str | Mapping[str, Any]) -> Reward:
    """Build a registered reward (loads its model, if it has one).

    Args:
        spec (`str | Mapping`): a name (`"shapes"`) or `{"name": "shapes", **params}`.

    Returns:
        `Reward`: the reward.

    Raises:
        `UserError`: what `check_spec` refuses, or parameter values the factory refuses.
    """
    name, params = check_spec(spec)
    return REWARDS[name](**params)
