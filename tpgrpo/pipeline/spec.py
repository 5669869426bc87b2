"""A reward spec, typed: a registered name and its parameters.

A config or `--reward` holds a spec as data (`SpecData`): `"jpeg"` or `{"name": "jpeg", ...}`.
`"jpeg"` and `{"name": "jpeg"}` are the same reward, and hash the same (`pipeline.lineage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tpgrpo.config import SpecData


@dataclass(frozen=True)
class RewardSpec:
    """A reward by registered name, with its parameters (none for the reward's defaults)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: SpecData) -> RewardSpec | None:
        """The spec `data` holds; None when it names no reward (`make_reward` says why)."""
        if isinstance(data, str):
            return cls(data)
        name = data.get("name") if isinstance(data, Mapping) else None
        if not isinstance(name, str):
            return None
        return cls(name, {k: v for k, v in data.items() if k != "name"})

    def to_data(self) -> SpecData:
        """The plain form: the name alone when there are no parameters."""
        return {"name": self.name, **self.params} if self.params else self.name


def plain_spec(data: SpecData) -> SpecData:
    """`data` in its plain form (`{"name": "jpeg"}` → `"jpeg"`); unparseable data as it is."""
    spec = RewardSpec.parse(data)
    return spec.to_data() if spec is not None else data
