"""`PromptSpec`: the machine-readable meaning of a prompt, shared by the scene sampler and the reward.

A spec is a task tag, one or two `ObjectSpec`s and, for `position`, a relation
`objects[0] <relation> objects[1]`. Its shape per task (checked on construction):

| task | objects | colour | count | relation |
|---|---|---|---|---|
| single_object | 1 | None | 1 | None |
| counting | 1 | optional | 2–4 | None |
| colors | 1 | required | 1 | None |
| position | 2, not identical | required | 1 | required |
| two_object | 2, different shapes | None | 1 | None |
| color_attr | 2, different colours | required | 1 | None |

The JSON form (`to_json`) is compact with sorted keys, so equal specs serialise identically:
`{"objects":[{"color":"red","count":1,"shape":"circle"}],"relation":null,"task":"colors"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tpgrpo.errors import UserError
from tpgrpo.world.palette import COLORS, NUMBERS, RELATIONS, SHAPES, TASKS


@dataclass(frozen=True)
class ObjectSpec:
    """One object (or a group of equal objects) a prompt asks for.

    Args:
        shape (`str`): one of `SHAPES`.
        color (`str | None`): one of `COLORS`, or None when the prompt names no colour.
        count (`int`): how many; 1 except in `counting` prompts (2–4).
    """

    shape: str
    color: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise UserError(f"unknown shape {self.shape!r}; expected one of {list(SHAPES)}")
        if self.color is not None and self.color not in COLORS:
            raise UserError(f"unknown colour {self.color!r}; expected one of {list(COLORS)} or None")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or not 1 <= self.count <= 4:
            raise UserError(f"object count must be an int in 1..4, got {self.count!r}")

    def to_dict(self) -> dict[str, Any]:
        """`{"shape": ..., "color": ... | None, "count": ...}`."""
        return {"shape": self.shape, "color": self.color, "count": self.count}


@dataclass(frozen=True)
class PromptSpec:
    """A prompt's meaning: task, objects and relation (see the module docstring for the rules).

    Args:
        task (`str`): one of `TASKS`.
        objects (`tuple[ObjectSpec, ...]`): the objects, in prompt order.
        relation (`str | None`): for `position`, `objects[0] <relation> objects[1]`; else None.
    """

    task: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple):
            raise UserError(f"PromptSpec.objects must be a tuple, got {type(self.objects).__name__}")
        problem = _problem(self)
        if problem is not None:
            raise UserError(f"invalid {self.task!r} prompt spec {self.to_dict()}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data."""
        return {
            "task": self.task,
            "objects": [o.to_dict() for o in self.objects],
            "relation": self.relation,
        }

    def to_json(self) -> str:
        """Compact JSON with sorted keys (the `spec` column of the `prompts` dataset)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSpec:
        """Inverse of `to_dict`; raises `UserError` on missing or unknown keys or invalid values."""
        if not isinstance(data, dict) or set(data) != {"task", "objects", "relation"}:
            raise UserError(f"a prompt spec needs exactly the keys task, objects, relation; got {data!r}")
        objects = []
        for o in data["objects"]:
            if not isinstance(o, dict) or set(o) != {"shape", "color", "count"}:
                raise UserError(f"a spec object needs exactly the keys shape, color, count; got {o!r}")
            objects.append(ObjectSpec(shape=o["shape"], color=o["color"], count=o["count"]))
        return cls(task=data["task"], objects=tuple(objects), relation=data["relation"])

    @classmethod
    def from_json(cls, text: str) -> PromptSpec:
        """Inverse of `to_json`; raises `UserError` on malformed JSON or an invalid spec."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"prompt spec is not valid JSON ({e}): {text!r}") from e
        return cls.from_dict(data)


def _problem(spec: PromptSpec) -> str | None:
    """The first rule of the module docstring's table that `spec` breaks, or None."""
    task, objs, rel = spec.task, spec.objects, spec.relation
    if task not in TASKS:
        return f"unknown task; expected one of {list(TASKS)}"
    if not all(isinstance(o, ObjectSpec) for o in objs):
        return "objects must be ObjectSpec instances"
    n_objects = 2 if task in ("position", "two_object", "color_attr") else 1
    if len(objs) != n_objects:
        return f"needs {n_objects} object(s), got {len(objs)}"
    if (rel is not None) != (task == "position"):
        return "a relation is required for position and forbidden otherwise"
    if rel is not None and rel not in RELATIONS:
        return f"unknown relation {rel!r}; expected one of {list(RELATIONS)}"
    if task == "counting":
        return None if objs[0].count in NUMBERS else f"count must be one of {sorted(NUMBERS)}"
    if any(o.count != 1 for o in objs):
        return "count must be 1"
    if task in ("single_object", "two_object") and any(o.color is not None for o in objs):
        return "this task names no colour"
    if task in ("colors", "position", "color_attr") and any(o.color is None for o in objs):
        return "this task needs a colour for every object"
    if task == "two_object" and objs[0].shape == objs[1].shape:
        return "the two shapes must differ"
    if task == "color_attr" and objs[0].color == objs[1].color:
        return "the two colours must differ"
    if task == "position" and objs[0] == objs[1]:
        return "the two objects must differ in colour or shape"
    return None
