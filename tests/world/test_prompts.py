"""The committed prompt sets: reproducible, disjoint, valid."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tpgrpo.errors import DataError, UserError
from tpgrpo.world.grammar import VOCABULARY, canonical
from tpgrpo.world.palette import TASKS
from tpgrpo.world.prompts import (
    SPLIT_CLASSES,
    build_prompt_sets,
    format_jsonl,
    load_prompts,
    main,
    parse,
    prompt_file,
    read_prompt_file,
)


def test_regenerating_reproduces_committed_files() -> None:
    for split, records in build_prompt_sets().items():
        assert prompt_file(split).read_text(encoding="utf-8") == format_jsonl(records), split
    assert main(["--check"]) == 0


def test_sizes_tasks_and_disjointness() -> None:
    train, test = load_prompts("train"), load_prompts("test")
    assert len(train) == 332 and len(test) == 146
    assert set(Counter(r.task for r in test)) == set(TASKS) == set(Counter(r.task for r in train))
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    # held out even up to paraphrase ("A left of B" vs "B right of A")
    assert not {canonical(r.spec) for r in train} & {canonical(r.spec) for r in test}
    assert {w for r in train for w in r.prompt.split()} == set(VOCABULARY)
    ids = [r.prompt_id for r in train + test]
    assert len(set(ids)) == len(ids)
    for task, (n_train, n_test) in SPLIT_CLASSES.items():
        assert len({canonical(r.spec) for r in train if r.task == task}) == n_train
        assert len({canonical(r.spec) for r in test if r.task == task}) == n_test


def test_records_are_consistent() -> None:
    for split in ("train", "test"):
        for r in load_prompts(split):
            assert r.split == split and r.prompt_id.startswith(split + "-")
            assert parse(r.prompt) == r.spec and r.task == r.spec.task
    row = load_prompts("test")[0].to_row()
    assert list(row) == ["prompt_id", "prompt", "task", "spec", "split"]
    assert row["spec"] == load_prompts("test")[0].spec.to_json()


def test_unknown_split() -> None:
    with pytest.raises(UserError, match="unknown prompt split"):
        load_prompts("validation")  # type: ignore[arg-type]


def test_broken_files_raise_data_error(tmp_path: Path) -> None:
    good = prompt_file("test").read_text(encoding="utf-8").splitlines()
    cases = {
        "missing.jsonl": None,
        "not_json.jsonl": "{",
        "disagree.jsonl": good[0].replace('"a photo of a circle"', '"a photo of a square"'),
        "bad_spec.jsonl": good[0].replace('"count": 1', '"count": 7'),
        "dup.jsonl": good[0] + "\n" + good[0],
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(DataError):
            read_prompt_file(path, "test")
    assert read_prompt_file(prompt_file("test"), "test") == load_prompts("test")
