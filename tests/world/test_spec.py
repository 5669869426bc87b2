"""PromptSpec validation and its JSON form."""

from __future__ import annotations

import pytest

from tpgrpo.errors import UserError
from tpgrpo.world.spec import ObjectSpec, PromptSpec

R, S = ObjectSpec("circle", "red"), ObjectSpec("square", "red")


def test_json_round_trip_and_compact_form() -> None:
    spec = PromptSpec("position", (ObjectSpec("square", "blue"), ObjectSpec("circle", "yellow")), "left of")
    text = spec.to_json()
    assert text.startswith('{"objects":[{"color":"blue","count":1,"shape":"square"}')
    assert PromptSpec.from_json(text) == spec
    assert PromptSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("task", "objects", "relation", "fragment"),
    [
        ("painting", (ObjectSpec("circle"),), None, "unknown task"),
        ("single_object", (ObjectSpec("circle"), ObjectSpec("square")), None, "needs 1 object"),
        ("single_object", (ObjectSpec("circle", "red"),), None, "names no colour"),
        ("colors", (ObjectSpec("circle"),), None, "needs a colour"),
        ("counting", (ObjectSpec("circle", None, 1),), None, "count must be one of"),
        ("colors", (ObjectSpec("circle", "red", 2),), None, "count must be 1"),
        ("position", (R, S), None, "relation is required"),
        ("colors", (ObjectSpec("circle", "red"),), "above", "forbidden"),
        ("position", (R, R), "above", "must differ"),
        ("two_object", (ObjectSpec("circle"), ObjectSpec("circle")), None, "shapes must differ"),
        ("color_attr", (R, S), None, "colours must differ"),
    ],
)
def test_invalid_specs_raise(
    task: str, objects: tuple[ObjectSpec, ...], relation: str | None, fragment: str
) -> None:
    with pytest.raises(UserError, match=fragment):
        PromptSpec(task, objects, relation)


def test_invalid_objects_raise() -> None:
    with pytest.raises(UserError, match="unknown shape"):
        ObjectSpec("hexagon")
    with pytest.raises(UserError, match="unknown colour"):
        ObjectSpec("circle", "teal")
    with pytest.raises(UserError, match="count"):
        ObjectSpec("circle", None, 5)
    with pytest.raises(UserError, match="count"):
        ObjectSpec("circle", None, True)


def test_bad_json_raises_user_error() -> None:
    with pytest.raises(UserError, match="not valid JSON"):
        PromptSpec.from_json("{")
    with pytest.raises(UserError, match="exactly the keys"):
        PromptSpec.from_json('{"task": "colors"}')
    with pytest.raises(UserError, match="exactly the keys shape, color, count"):
        PromptSpec.from_json('{"task": "colors", "relation": null, "objects": [{"shape": "circle"}]}')
