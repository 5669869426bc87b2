"""The prompt grammar: exact inverse, errors, enumeration, sampling, paraphrase classes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpgrpo.errors import UserError
from tpgrpo.world.grammar import VOCABULARY, all_specs, canonical, parse, render_prompt, sample_spec
from tpgrpo.world.palette import TASKS
from tpgrpo.world.spec import ObjectSpec, PromptSpec

ALL = [s for t in TASKS for s in all_specs(t)]


def test_space_sizes() -> None:
    # single 3 shapes; counting 3 numbers x (no colour + 5) x 3 shapes; colors 5x3;
    # position 4 relations x 15 x 14 ordered distinct pairs; two_object 3x2; color_attr 15 x 12
    sizes = {t: len(all_specs(t)) for t in TASKS}
    assert sizes == {
        "single_object": 3,
        "counting": 54,
        "colors": 15,
        "position": 840,
        "two_object": 6,
        "color_attr": 180,
    }
    assert len({render_prompt(s) for s in ALL}) == len(ALL)


@given(st.sampled_from(ALL))
def test_parse_inverts_render(spec: PromptSpec) -> None:
    prompt = render_prompt(spec)
    assert parse(prompt) == spec
    assert prompt == prompt.lower() and "  " not in prompt
    assert set(prompt.split()) <= set(VOCABULARY)


def test_every_spec_round_trips_and_vocabulary_is_exact() -> None:
    assert all(parse(render_prompt(s)) == s for s in ALL)
    assert {w for s in ALL for w in render_prompt(s).split()} == set(VOCABULARY)
    assert len(VOCABULARY) == len(set(VOCABULARY))


@given(st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=12))
def test_any_word_sequence_parses_exactly_or_raises(words: list[str]) -> None:
    text = " ".join(words)
    try:
        spec = parse(text)
    except UserError as e:
        assert repr(text) in str(e)
    else:
        assert render_prompt(spec) == text


def test_examples() -> None:
    assert parse("a photo of three squares") == PromptSpec("counting", (ObjectSpec("square", None, 3),))
    assert parse("a photo of a blue square left of a yellow circle") == PromptSpec(
        "position", (ObjectSpec("square", "blue"), ObjectSpec("circle", "yellow")), "left of"
    )
    two_red = PromptSpec("counting", (ObjectSpec("circle", "red", 2),))
    assert render_prompt(two_red) == "a photo of two red circles"


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("A photo of a circle", "outside"),
        ("a photo of a  circle", "outside"),
        ("a photo of a circle.", "outside"),
        ("a photo of a hexagon", "outside"),
        ("a photo of one circle", "outside"),
        ("a photo of a teal circle", "outside"),
        ("", "outside"),
        ("a photo of a circle and a circle", "fits the two_object template but not its rules"),
        ("a photo of a red circle and a red square", "fits the color_attr template"),
        ("a photo of a red circle above a red circle", "fits the position template"),
    ],
)
def test_parse_errors_name_the_prompt(prompt: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment) as info:
        parse(prompt)
    assert repr(prompt) in str(info.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(UserError, match="must be a string"):
        parse(3)  # type: ignore[arg-type]


def test_sample_spec_is_deterministic_and_covers_tasks() -> None:
    a = [sample_spec(np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(0)
    drawn = [sample_spec(rng) for _ in range(600)]
    assert {s.task for s in drawn} == set(TASKS)
    assert all(sample_spec(rng, "counting").task == "counting" for _ in range(20))
    with pytest.raises(UserError, match="unknown task"):
        sample_spec(rng, "drawing")


def test_canonical_merges_paraphrases_only() -> None:
    p = parse("a photo of a red circle left of a blue square")
    q = parse("a photo of a blue square right of a red circle")
    assert canonical(p) == canonical(q) == p
    assert canonical(parse("a photo of a square and a circle")) == parse("a photo of a circle and a square")
    assert canonical(parse("a photo of a red circle above a blue square")) != canonical(p)
    # classes: position pairs up every prompt with its mirror, color_attr/two_object with the swap
    for task, size in {"position": 420, "color_attr": 90, "two_object": 3, "counting": 54}.items():
        assert len({canonical(s) for s in all_specs(task)}) == size
