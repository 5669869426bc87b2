"""The prompt grammar: `render_prompt(spec)` and its exact inverse `parse(prompt)`.

One template family per task, lowercase, single spaces, no punctuation (`C` a colour of
`COLORS`, `S` a shape of `SHAPES`, `N` a number word of `NUMBERS`, `R` a relation of `RELATIONS`):

| task | template | example |
|---|---|---|
| single_object | `a photo of a S` | a photo of a circle |
| counting | `a photo of N [C] S-plural` | a photo of three squares / a photo of two red circles |
| colors | `a photo of a C S` | a photo of a green triangle |
| position | `a photo of a C S R a C S` | a photo of a blue square left of a yellow circle |
| two_object | `a photo of a S and a S` | a photo of a circle and a square |
| color_attr | `a photo of a C S and a C S` | a photo of a red circle and a blue triangle |

Every word of the world starts with a consonant, so the article is always "a". The grammar is
unambiguous, so `parse(render_prompt(spec)) == spec` for every valid spec and every prompt
outside it raises `UserError`. `VOCABULARY` lists every word the grammar can produce
(append-only: the tiny tokenizers' ids derive from its order).

`all_specs(task)` enumerates a task's whole prompt space (single_object 3, counting 54, colors 15,
position 840, two_object 6, color_attr 180 prompts); `sample_spec` draws uniformly from it.
`canonical(spec)` maps prompts that mean the same scene to one representative ("A left of B" ≡
"B right of A"; "A and B" ≡ "B and A"), so held-out prompt sets can exclude paraphrases.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable

import numpy as np

from tpgrpo.errors import UserError
from tpgrpo.world.palette import COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES, TASKS
from tpgrpo.world.relations import INVERSE
from tpgrpo.world.spec import ObjectSpec, PromptSpec

PREFIX = "a photo of"

VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *PREFIX.split(),
            "and",
            *NUMBERS.values(),
            *COLORS,
            *SHAPES,
            *PLURALS.values(),
            *(w for r in RELATIONS for w in r.split()),
        ]
    )
)
"""Every word the grammar can produce, in a fixed order (append-only)."""


def _alt(words: Iterable[str]) -> str:
    return "(" + "|".join(re.escape(w) for w in words) + ")"


_C, _S, _P, _N, _R = (_alt(x) for x in (COLORS, SHAPES, PLURALS.values(), NUMBERS.values(), RELATIONS))
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (task, re.compile(f"{PREFIX} {body}"))
    for task, body in (
        ("single_object", f"a {_S}"),
        ("counting", f"{_N} (?:{_C} )?{_P}"),
        ("colors", f"a {_C} {_S}"),
        ("position", f"a {_C} {_S} {_R} a {_C} {_S}"),
        ("two_object", f"a {_S} and a {_S}"),
        ("color_attr", f"a {_C} {_S} and a {_C} {_S}"),
    )
)
_COUNT_OF_WORD = {w: n for n, w in NUMBERS.items()}
_SHAPE_OF_PLURAL = {p: s for s, p in PLURALS.items()}


def render_prompt(spec: PromptSpec) -> str:
    """The prompt text of a spec (see the module docstring's table).

    Args:
        spec (`PromptSpec`): a valid spec.

    Returns:
        `str`: e.g. `"a photo of a blue square left of a yellow circle"`.
    """
    objs = spec.objects

    def one(o: ObjectSpec) -> str:
        return f"a {o.color} {o.shape}" if o.color is not None else f"a {o.shape}"

    if spec.task == "counting":
        o = objs[0]
        color = f"{o.color} " if o.color is not None else ""
        return f"{PREFIX} {NUMBERS[o.count]} {color}{PLURALS[o.shape]}"
    if spec.task == "position":
        return f"{PREFIX} {one(objs[0])} {spec.relation} {one(objs[1])}"
    return f"{PREFIX} " + " and ".join(one(o) for o in objs)


@functools.lru_cache(maxsize=65536)
def parse(prompt: str) -> PromptSpec:
    """Parse a prompt of the grammar back into its spec (cached; specs are immutable).

    Args:
        prompt (`str`): the prompt text, exactly as `render_prompt` writes it.

    Returns:
        `PromptSpec`: the spec with `render_prompt(spec) == prompt`.

    Raises:
        `UserError`: the text is outside the grammar (names the prompt and the templates).
    """
    if not isinstance(prompt, str):
        raise UserError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    for task, pattern in _PATTERNS:
        m = pattern.fullmatch(prompt)
        if m is None:
            continue
        g = m.groups()
        try:
            if task == "single_object":
                return PromptSpec(task, (ObjectSpec(g[0]),))
            if task == "counting":
                return PromptSpec(task, (ObjectSpec(_SHAPE_OF_PLURAL[g[2]], g[1], _COUNT_OF_WORD[g[0]]),))
            if task == "colors":
                return PromptSpec(task, (ObjectSpec(g[1], g[0]),))
            if task == "position":
                return PromptSpec(task, (ObjectSpec(g[1], g[0]), ObjectSpec(g[4], g[3])), g[2])
            if task == "two_object":
                return PromptSpec(task, (ObjectSpec(g[0]), ObjectSpec(g[1])))
            return PromptSpec(task, (ObjectSpec(g[1], g[0]), ObjectSpec(g[3], g[2])))
        except UserError as e:
            raise UserError(f"prompt {prompt!r} fits the {task} template but not its rules: {e}") from e
    raise UserError(
        f"prompt {prompt!r} is outside the shapes-world grammar; expected e.g. "
        "'a photo of a circle', 'a photo of three red squares', 'a photo of a green triangle', "
        "'a photo of a blue square left of a yellow circle', 'a photo of a circle and a square', "
        "'a photo of a red circle and a blue triangle' (lowercase, single spaces)"
    )


@functools.cache
def all_specs(task: str) -> tuple[PromptSpec, ...]:
    """Every valid spec of a task, in a fixed order (colours, shapes, numbers, relations in
    palette order).

    Args:
        task (`str`): one of `TASKS`.

    Returns:
        `tuple[PromptSpec, ...]`: the task's whole prompt space.
    """
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    colored = [ObjectSpec(s, c) for c in COLORS for s in SHAPES]
    plain = [ObjectSpec(s) for s in SHAPES]
    pairs = itertools.product
    if task == "single_object":
        return tuple(PromptSpec(task, (o,)) for o in plain)
    if task == "counting":
        return tuple(
            PromptSpec(task, (ObjectSpec(s, c, n),)) for n in NUMBERS for c in (None, *COLORS) for s in SHAPES
        )
    if task == "colors":
        return tuple(PromptSpec(task, (o,)) for o in colored)
    if task == "position":
        return tuple(
            PromptSpec(task, (a, b), r) for r in RELATIONS for a, b in pairs(colored, colored) if a != b
        )
    if task == "two_object":
        return tuple(PromptSpec(task, (a, b)) for a, b in pairs(plain, plain) if a != b)
    return tuple(PromptSpec(task, (a, b)) for a, b in pairs(colored, colored) if a.color != b.color)


def sample_spec(rng: np.random.Generator, task: str | None = None) -> PromptSpec:
    """Draw a spec: the task uniformly from `TASKS` (unless given), then uniformly from its space.

    Args:
        rng (`np.random.Generator`): the randomness (two draws).
        task (`str | None`): fix the task, or None for a uniform task.

    Returns:
        `PromptSpec`: a valid spec.
    """
    if task is None:
        task = TASKS[int(rng.integers(len(TASKS)))]
    space = all_specs(task)
    return space[int(rng.integers(len(space)))]


def canonical(spec: PromptSpec) -> PromptSpec:
    """One representative of the specs that describe the same scenes.

    `two_object`/`color_attr`: objects in `all_specs` order; `position`: "right of"/"below" are
    rewritten as "left of"/"above" with the objects swapped. Other tasks map to themselves.
    """
    if spec.task in ("two_object", "color_attr"):
        a, b = spec.objects
        return PromptSpec(spec.task, (a, b) if _key(a) <= _key(b) else (b, a))
    if spec.task == "position" and spec.relation in ("right of", "below"):
        a, b = spec.objects
        return PromptSpec(spec.task, (b, a), INVERSE[spec.relation])
    return spec


def _key(o: ObjectSpec) -> tuple[int, int]:
    colors = list(COLORS)
    return (colors.index(o.color) + 1 if o.color is not None else 0, SHAPES.index(o.shape))
