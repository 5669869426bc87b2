"""Prompts of the shapes world: the grammar's public names and the fixed train / test prompt sets.

Re-exports `PromptSpec`, `ObjectSpec`, `render_prompt`, `parse`, `VOCABULARY`, `sample_spec`
(see `tpgrpo.world.grammar` and `tpgrpo.world.spec`) and owns the prompt files
`tpgrpo/world/data/prompts_{train,test}.jsonl`, one JSON object a line:
`{"prompt_id": "train-0000", "prompt": "...", "task": "...", "spec": {...}}`.

How the files are made (`build_prompt_sets`, deterministic, seed `SPLIT_SEED`): for each task,
its prompts are grouped into paraphrase classes (`canonical`: "A left of B" ≡ "B right of A",
"A and B" ≡ "B and A"); the classes are shuffled and the first `SPLIT_CLASSES[task][1]` go to
test, the next `SPLIT_CLASSES[task][0]` to train, each class with all its paraphrases. Test is
therefore disjoint from train even up to paraphrase, and tasks with a tiny space still appear in
both splits (single_object holds out one of its three prompts). Sizes: 332 train, 146 test.
Every vocabulary word occurs in train. Ids number the prompts of a split in task order, then in
`all_specs` order.

Regenerate with `python -m tpgrpo.world.prompts --write`; `--check` exits non-zero when the
committed files differ from what the code builds.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tpgrpo.errors import DataError, UserError
from tpgrpo.world.grammar import VOCABULARY, all_specs, canonical, parse, render_prompt, sample_spec
from tpgrpo.world.palette import TASKS
from tpgrpo.world.spec import ObjectSpec, PromptSpec

__all__ = [
    "SPLITS",
    "SPLIT_CLASSES",
    "SPLIT_SEED",
    "VOCABULARY",
    "ObjectSpec",
    "PromptRecord",
    "PromptSpec",
    "build_prompt_sets",
    "format_jsonl",
    "load_prompts",
    "parse",
    "read_prompt_file",
    "render_prompt",
    "sample_spec",
]

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")
SPLIT_SEED = 20_251_125
"""Seed of the class shuffle that builds the prompt sets."""
SPLIT_CLASSES: dict[str, tuple[int, int]] = {
    "single_object": (2, 1),
    "counting": (36, 18),
    "colors": (10, 5),
    "position": (80, 30),
    "two_object": (2, 1),
    "color_attr": (60, 30),
}
"""Task -> (train, test) numbers of paraphrase classes (a class holds 1 or 2 prompts)."""


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a fixed prompt set.

    Args:
        prompt_id (`str`): unique across splits, e.g. `"test-0042"`.
        prompt (`str`): the prompt text.
        task (`str`): its task tag.
        spec (`PromptSpec`): its meaning (`parse(prompt)`).
        split (`str`): `"train"` or `"test"`.
    """

    prompt_id: str
    prompt: str
    task: str
    spec: PromptSpec
    split: str

    def to_json_line(self) -> str:
        """The record's line in the prompt file (no split: the file names it)."""
        line = {"prompt_id": self.prompt_id, "prompt": self.prompt, "task": self.task}
        return json.dumps({**line, "spec": self.spec.to_dict()}, separators=(", ", ": "))

    def to_row(self) -> dict[str, Any]:
        """The row of the `prompts` dataset: `prompt_id, prompt, task, spec (JSON), split`."""
        return {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "task": self.task,
            "spec": self.spec.to_json(),
            "split": self.split,
        }


def build_prompt_sets(seed: int = SPLIT_SEED) -> dict[str, list[PromptRecord]]:
    """Build the train and test prompt sets (see the module docstring).

    Args:
        seed (`int`): seed of the class shuffle.

    Returns:
        `dict[str, list[PromptRecord]]`: `{"train": [...], "test": [...]}`.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[PromptSpec]] = {"train": [], "test": []}
    for task in TASKS:
        specs = all_specs(task)
        classes = list(dict.fromkeys(canonical(s) for s in specs))  # first-seen order
        n_train, n_test = SPLIT_CLASSES[task]
        perm = rng.permutation(len(classes))
        by_split = {"test": set(perm[:n_test].tolist())}
        by_split["train"] = set(perm[n_test : n_test + n_train].tolist())
        index = {c: i for i, c in enumerate(classes)}
        for split, members in by_split.items():
            chosen[split].extend(s for s in specs if index[canonical(s)] in members)
    return {split: [_record(split, i, s) for i, s in enumerate(ss)] for split, ss in chosen.items()}


def _record(split: str, i: int, spec: PromptSpec) -> PromptRecord:
    return PromptRecord(f"{split}-{i:04d}", render_prompt(spec), spec.task, spec, split)


def format_jsonl(records: list[PromptRecord]) -> str:
    """The prompt file's text: one `to_json_line` per record, newline-terminated."""
    return "".join(r.to_json_line() + "\n" for r in records)


def prompt_file(split: str) -> Path:
    """Path of a split's committed prompt file inside the package."""
    if split not in SPLITS:
        raise UserError(f"unknown prompt split {split!r}; expected one of {list(SPLITS)}")
    return Path(str(resources.files("tpgrpo.world") / "data" / f"prompts_{split}.jsonl"))


def load_prompts(split: Split) -> list[PromptRecord]:
    """The fixed prompt set of a split, validated.

    Args:
        split (`"train" | "test"`): which set.

    Returns:
        `list[PromptRecord]`: in file order.

    Raises:
        `UserError`: unknown split. `DataError`: a missing file or a line whose prompt, task and
            spec disagree.
    """
    return list(_load(split))


@functools.cache
def _load(split: str) -> tuple[PromptRecord, ...]:
    return tuple(read_prompt_file(prompt_file(split), split))


def read_prompt_file(path: Path, split: str) -> list[PromptRecord]:
    """Read and validate a prompt file (see `load_prompts`).

    Args:
        path (`Path`): a JSONL file in the committed files' format.
        split (`str`): the split to stamp on the records.

    Returns:
        `list[PromptRecord]`: in file order.
    """
    if not path.is_file():
        raise DataError(f"prompt file {path} is missing; run `python -m tpgrpo.world.prompts --write`")
    records: list[PromptRecord] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            spec = PromptSpec.from_dict(row["spec"])
            ok = parse(row["prompt"]) == spec and row["task"] == spec.task
        except (json.JSONDecodeError, KeyError, TypeError, UserError) as e:
            raise DataError(f"{path}:{n}: bad prompt record ({e}): {line!r}") from e
        if not ok:
            raise DataError(f"{path}:{n}: prompt, task and spec disagree: {line!r}")
        records.append(PromptRecord(row["prompt_id"], row["prompt"], row["task"], spec, split))
    if len({r.prompt_id for r in records}) != len(records):
        raise DataError(f"{path}: duplicate prompt ids")
    return records


def main(argv: list[str] | None = None) -> int:
    """`python -m tpgrpo.world.prompts (--write | --check)`."""
    ap = argparse.ArgumentParser(prog="python -m tpgrpo.world.prompts", description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="(re)write the committed prompt files")
    group.add_argument("--check", action="store_true", help="exit 1 if the committed files are stale")
    args = ap.parse_args(argv)
    stale = []
    for split, records in build_prompt_sets().items():
        path, text = prompt_file(split), format_jsonl(records)
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {len(records)} prompts to {path}")
        elif not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    if stale:
        print(f"stale prompt files: {stale}; run `python -m tpgrpo.world.prompts --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
