"""Fuzzing the two readers of user files: the config loader and the prompt reader.

Whatever the input, the answer is a valid result or one `ConfigError` (a `UserError`: exit code 2
with one message); never another exception, a hang or a result that breaks a later stage.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tpgrpo.config import Config, load_config, load_config_data
from tpgrpo.errors import ConfigError
from tpgrpo.stages.prompts import MAX_PROMPT_CHARS, read_prompt_source
from tpgrpo.storage import read_table, write_dataset

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# the real keys, so that generated configs reach deep into validation, plus strangers
SECTIONS: dict[str, list[str]] = {
    name: list(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in Config.model_fields.items()
    if hasattr(field.annotation, "model_fields")
}
TOP_KEYS = [name for name in Config.model_fields if name not in SECTIONS]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
hashable_keys = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(), st.dates())


@st.composite
def config_data(draw: st.DrawFn) -> Any:
    """A config-shaped tree: real sections and keys with random values, and random strangers."""
    data: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), max_size=3, unique=True)):
        data[key] = draw(values)
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=4, unique=True)):
        fields = draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=4, unique=True))
        data[section] = {f: draw(values) for f in fields} if draw(st.booleans()) else draw(values)
    data.update(draw(st.dictionaries(hashable_keys, values, max_size=2)))
    return draw(st.one_of(st.just(data), values))


def _check_config(load: Any) -> None:
    try:
        cfg = load()
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        assert str(err).startswith("invalid configuration")
        return
    assert isinstance(cfg, Config)
    json.dumps(cfg.public_dict(), allow_nan=False)  # run.json can be written
    assert len(cfg.hash()) == 64


@FUZZ
@given(data=config_data())
@example(data={"name": datetime.date(2020, 1, 1)})
@example(data={"reward": {"spec": {"name": "shapes", "w": datetime.datetime(2020, 1, 1)}}})
@example(data={"update": {"lr": math.nan}})
@example(data={1: 2, None: {"a": b"\x00"}})
def test_config_data_loads_or_raises_config_error(data: Any) -> None:
    _check_config(lambda: load_config_data(data))


@FUZZ
@given(data=config_data(), overrides=st.lists(st.text(max_size=30), max_size=3))
@example(data={}, overrides=["name=2020-01-01"])
@example(data={}, overrides=["update=[1, 2]", "update.lr=1"])
@example(data={}, overrides=["a..b=1", "=", "x"])
def test_overrides_load_or_raise_config_error(data: Any, overrides: list[str]) -> None:
    _check_config(lambda: load_config_data(data, overrides))


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.builds(yaml.safe_dump, config_data())))
@example(text="a: [1, 2\nb: }")
@example(text="- 1\n- 2\n")
@example(text="name: !!python/object/apply:os.system ['true']\n")
@example(text="? [a, b]\n: 1\n")
@example(text="[" * 5000 + "]" * 5000)
@example(text="a: &x [1, 2]\nb: *x\nc: *y\n")
def test_config_files_load_or_raise_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check_config(lambda: load_config(path))


@FUZZ
@given(raw=st.binary(max_size=200))
@example(raw=b"\xff\xfe\x00n\x00a\x00m\x00e")
@example(raw=b"name: tiny\n\x00")
def test_config_bytes_load_or_raise_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(raw)
    _check_config(lambda: load_config(path))


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """'Billion laughs': nine levels of nine aliases, 9^9 leaves once expanded."""
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines[-1] = lines[-1].replace(f"a{i - 1}:", f"a{i - 1}: &a{i - 1}")
        lines.append(f"a{i}: &a{i} [{refs}]")
    bomb = "reward:\n  spec:\n    name: shapes\n" + "".join(f"    {line}\n" for line in lines)
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    with pytest.raises(ConfigError):
        load_config(path)


# --- prompt files ---------------------------------------------------------------------------------

prompt_lines = st.one_of(
    st.text(max_size=60),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["prompt", "prompt_id", "task", "spec", "other"]),
            json_values,
            max_size=4,
        ),
    ),
    st.builds(lambda p: json.dumps({"prompt": p}), st.text(max_size=60)),
    st.builds(lambda p: json.dumps({"prompt": p}, ensure_ascii=False), st.text(max_size=60)),
)


def _check_prompts(path: Path, tmp_path: Path) -> None:
    try:
        rows = read_prompt_source(str(path))
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        return
    assert rows
    ids = [r["prompt_id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        prompt = row["prompt"]
        assert isinstance(prompt, str) and prompt.strip() and len(prompt) <= MAX_PROMPT_CHARS
        assert not any(ord(c) < 32 and c != "\t" for c in prompt)
        assert isinstance(row["prompt_id"], str) and isinstance(row["task"], str)
        assert row["spec"] is None or isinstance(row["spec"], str)
    # what the reader accepts, the run can store and read back (init_run writes it as is)
    cols = {k: [r[k] for r in rows] for k in ("prompt_id", "prompt", "task", "spec", "split")}
    uri = str(tmp_path / "prompts-dataset")
    write_dataset(uri, "prompts", cols, inputs={}, config_hash="fuzz")
    assert read_table(uri, "prompts").column("prompt").to_pylist() == cols["prompt"]


@FUZZ
@given(lines=st.lists(prompt_lines, max_size=6), suffix=st.sampled_from([".txt", ".jsonl"]))
@example(lines=['{"prompt": "a \\ud800 b"}'], suffix=".jsonl")
@example(lines=['{"prompt": "ok", "prompt_id": 1}', '{"prompt": "ok", "prompt_id": "1"}'], suffix=".jsonl")
@example(lines=['{"prompt": "x", "spec": NaN}'], suffix=".jsonl")
@example(lines=["# only a comment", "   "], suffix=".txt")
@example(lines=["a\u2028b"], suffix=".txt")
def test_prompt_files_read_or_raise_config_error(
    tmp_path_factory: Any, lines: list[str], suffix: str
) -> None:
    tmp_path = tmp_path_factory.mktemp("prompts")
    path = tmp_path / f"prompts{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _check_prompts(path, tmp_path)


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".jsonl"]))
@example(raw=b"a red circle\n\xff\xfe\n", suffix=".txt")
@example(raw=b"\xef\xbb\xbfthree red circles\n", suffix=".txt")
@example(raw=b"", suffix=".jsonl")
def test_prompt_bytes_read_or_raise_config_error(tmp_path_factory: Any, raw: bytes, suffix: str) -> None:
    tmp_path = tmp_path_factory.mktemp("prompts")
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(raw)
    _check_prompts(path, tmp_path)
