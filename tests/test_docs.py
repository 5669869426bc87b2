"""The docs' examples are real: every reward JSON spec quoted in README.md and docs/*.md names a
registered reward and parameters its factory takes (a wrong key would fail a user copying it)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tpgrpo.rewards import REWARDS, resolve

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPEC = re.compile(r"""'(\{"name".*?\})'""", re.DOTALL)  # a shell-quoted JSON spec


def quoted_specs() -> list[tuple[str, str]]:
    return [(doc.name, m.group(1)) for doc in DOCS for m in SPEC.finditer(doc.read_text())]


def check(spec: Any) -> None:
    if isinstance(spec, str):
        assert spec in REWARDS, spec
        return
    params = {k: v for k, v in spec.items() if k != "name"}
    inspect.signature(resolve(REWARDS[spec["name"]])).bind(**params)  # TypeError on a wrong key
    for component in params.get("components", []):
        check(component["spec"])


def test_the_docs_quote_specs() -> None:
    assert len(quoted_specs()) >= 4  # the pattern still finds them


@pytest.mark.parametrize(("doc", "text"), quoted_specs())
def test_quoted_reward_specs_bind_to_their_factories(doc: str, text: str) -> None:
    check(json.loads(text))
