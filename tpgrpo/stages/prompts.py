"""The prompt set of a run: an embedded split (`train`, `test`) or a user file.

User files are UTF-8, either `.jsonl` (one object per line with at least `prompt`; optional
`prompt_id`, `task`, `spec`) or plain text (one prompt per line; blank lines and `#` comments
skipped). Every problem found is reported at once, naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tpgrpo.errors import ConfigError

EMBEDDED_SPLITS = ("train", "test")
MAX_PROMPT_CHARS = 2000


def read_prompt_source(source: str) -> list[dict[str, Any]]:
    """Rows of the `prompts` dataset for `rollout.prompts` / an evaluation prompt set.

    Raises:
        ConfigError: a missing, empty, non-UTF-8 or malformed file (all problems listed).
    """
    if source in EMBEDDED_SPLITS:
        from tpgrpo.world.prompts import load_prompts

        return [r.to_row() for r in load_prompts(source)]  # type: ignore[arg-type]
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            [f"prompt file {source!r} not found; use 'train' / 'test' (embedded sets) or a .jsonl/.txt file"]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"{source}: not UTF-8 text (invalid byte at offset {err.start}); re-save it as UTF-8"]
        ) from None
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or (path.suffix != ".jsonl" and stripped.startswith("#")):
            continue
        row, problem = _parse_line(stripped, path.suffix == ".jsonl", len(rows))
        if problem:
            problems.append(f"{source}:{n}: {problem}")
        elif row is not None:
            rows.append(row)
    if not rows and not problems:
        problems.append(f"{source}: no prompts in the file; add one prompt per line")
    ids = [r["prompt_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        problems.append(f"{source}: duplicate prompt_id(s) {dup}")
    if problems:
        raise ConfigError(problems)
    return rows


def select_tasks(rows: list[dict[str, Any]], tasks: list[str] | None, source: str) -> list[dict[str, Any]]:
    """The rows whose `task` is one of `tasks` (all rows when `tasks` is None), in source order.

    Raises:
        ConfigError: a task the source does not have (the message lists the tasks it has).
    """
    if tasks is None:
        return rows
    have = sorted({r["task"] for r in rows})
    unknown = [t for t in tasks if t not in have]
    if unknown:
        raise ConfigError(
            [
                f"rollout.tasks: {', '.join(map(repr, unknown))} not in the prompts of {source!r}, "
                f"whose tasks are {', '.join(have)}"
            ]
        )
    wanted = set(tasks)
    return [r for r in rows if r["task"] in wanted]


def run_prompts(cfg: Any) -> list[dict[str, Any]]:
    """Rows of a run's `prompts` dataset: `rollout.prompts`, restricted to `rollout.tasks`.

    Raises:
        ConfigError: see `read_prompt_source` and `select_tasks`.
    """
    source = cfg.rollout.prompts
    return select_tasks(read_prompt_source(source), cfg.rollout.tasks, source)


def _parse_line(line: str, is_jsonl: bool, index: int) -> tuple[dict[str, Any] | None, str | None]:
    if is_jsonl:
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            return None, f"invalid JSON ({err.msg})"
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            return None, "each line must be an object with a string 'prompt'"
        prompt = data["prompt"]
        pid = str(data.get("prompt_id", f"p{index:05d}"))
        task = str(data.get("task", "free"))
        spec = data.get("spec")
        spec_json = json.dumps(spec) if spec is not None and not isinstance(spec, str) else spec
    else:
        prompt, pid, task, spec_json = line, f"p{index:05d}", "free", None
    for name, text in (("prompt", prompt), ("prompt_id", pid), ("task", task), ("spec", spec_json or "")):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a JSON escape of a lone surrogate, e.g. "\ud800"
            return None, f"{name} is not valid Unicode (a lone surrogate escape)"
    if not prompt.strip():
        return None, "empty prompt"
    if len(prompt) > MAX_PROMPT_CHARS:
        return None, f"prompt longer than {MAX_PROMPT_CHARS} characters"
    if any(ord(c) < 32 and c not in "\t" for c in prompt):
        return None, "prompt contains control characters"
    return {"prompt_id": pid, "prompt": prompt, "task": task, "spec": spec_json, "split": "custom"}, None


def check_prompts_for_reward(rows: list[dict[str, Any]], reward_spec: Any) -> list[str]:
    """Problems a reward will have with these prompts, found before any sampling.

    The `shapes` reward needs prompts of the world's grammar; `ocr` needs a quoted target text.
    """
    name = reward_spec if isinstance(reward_spec, str) else dict(reward_spec).get("name")
    problems: list[str] = []
    if name == "shapes":
        from tpgrpo.errors import UserError
        from tpgrpo.world.prompts import parse

        for r in rows:
            try:
                parse(r["prompt"])
            except UserError as err:
                problems.append(f"prompt {r['prompt_id']!r} cannot be scored by 'shapes': {err}")
                if len(problems) >= 5:
                    problems.append("… (further prompts not checked)")
                    break
    return problems
