"""The run layout: the only place dataset and checkpoint paths are built.

```
<root>/<run_id>/run.json
<root>/<run_id>/run.lock
<root>/<run_id>/prompts/
<root>/<run_id>/iter=0003/{rollouts,branches,rewards/<reward_key>,annotations/<reward_key>/<mode>,updates}/
<root>/<run_id>/checkpoints/iter=0004/
<root>/<run_id>/eval/<checkpoint>/<reward_key>/
```
`root` is a local path or `s3://bucket/prefix`. Every name that becomes a path component is
validated here, so no run id, reward key, mode or checkpoint name can escape its directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tpgrpo.errors import DataError, UserError
from tpgrpo.storage.files import exists, list_dirs, read_bytes, write_atomic
from tpgrpo.storage.provenance import code_version
from tpgrpo.storage.uri import filesystem_for, join_uri

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
_CHECKPOINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}")
_ITER_DIR = re.compile(r"iter=(\d{4,})")


def _validate(value: object, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise UserError(f"invalid {what} {value!r}: must match {rule} and contain no '..'")
    return value


def validate_run_id(run_id: object) -> str:
    """Checks a run id: letters, digits, `_`, `.`, `-`; starts alphanumeric; ≤ 128 chars; no `..`.

    Returns:
        `str`: the run id.

    Raises:
        `UserError`: anything else (slashes, path traversal, empty).
    """
    return _validate(run_id, _RUN_ID, "run id", "[A-Za-z0-9][A-Za-z0-9_.-]*")


def validate_key(key: object) -> str:
    """Checks a reward key or reward mode: `[a-z0-9][a-z0-9_.-]*`, ≤ 128 chars, no `..`.

    Returns:
        `str`: the key.

    Raises:
        `UserError`: anything else.
    """
    return _validate(key, _KEY, "reward key or mode", "[a-z0-9][a-z0-9_.-]*")


def validate_checkpoint(name: object) -> str:
    """Checks a checkpoint name used in eval paths (e.g. `base`, `iter=0004`): `[A-Za-z0-9][A-Za-z0-9_.=-]*`.

    Returns:
        `str`: the name.

    Raises:
        `UserError`: anything else.
    """
    return _validate(name, _CHECKPOINT, "checkpoint name", "[A-Za-z0-9][A-Za-z0-9_.=-]*")


def _validate_iteration(iteration: object) -> int:
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise UserError(f"invalid iteration {iteration!r}: must be an integer >= 0")
    return iteration


def iteration_name(iteration: int) -> str:
    """The directory name of an iteration, `iter=0003` (zero-padded to 4 digits)."""
    return f"iter={_validate_iteration(iteration):04d}"


@dataclass(frozen=True)
class RunLayout:
    """URIs of everything stored for one run.

    Args:
        root (`str`): local path or `s3://bucket/prefix` holding the runs.
        run_id (`str`): the run's id (validated, see `validate_run_id`).
        storage_options (`Mapping[str, Any]`, *optional*): S3 options for `list_iterations`; left
            out of `repr` and comparisons.
    """

    root: str
    run_id: str
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)
        if not self.root:
            raise UserError("empty runs root; use a local path or s3://bucket/prefix")

    @property
    def run_dir(self) -> str:
        """`<root>/<run_id>`."""
        return join_uri(self.root, self.run_id)

    def run_json(self) -> str:
        """`<run>/run.json`: resolved config, code version, creation time."""
        return join_uri(self.run_dir, "run.json")

    def lock(self) -> str:
        """`<run>/run.lock`: held by the process driving the run."""
        return join_uri(self.run_dir, "run.lock")

    def prompts(self) -> str:
        """`<run>/prompts`: the run's prompt set (`prompts` dataset)."""
        return join_uri(self.run_dir, "prompts")

    def iteration_dir(self, iteration: int) -> str:
        """`<run>/iter=NNNN`."""
        return join_uri(self.run_dir, iteration_name(iteration))

    def rollouts(self, iteration: int) -> str:
        """`<run>/iter=NNNN/rollouts` (`rollouts` dataset)."""
        return join_uri(self.iteration_dir(iteration), "rollouts")

    def branches(self, iteration: int) -> str:
        """`<run>/iter=NNNN/branches` (`branches` dataset)."""
        return join_uri(self.iteration_dir(iteration), "branches")

    def rewards(self, iteration: int, reward_key: str) -> str:
        """`<run>/iter=NNNN/rewards/<reward_key>` (`rewards` dataset)."""
        return join_uri(self.iteration_dir(iteration), "rewards", validate_key(reward_key))

    def annotations(self, iteration: int, reward_key: str, mode: str) -> str:
        """`<run>/iter=NNNN/annotations/<reward_key>/<mode>` (`annotations` dataset)."""
        return join_uri(
            self.iteration_dir(iteration), "annotations", validate_key(reward_key), validate_key(mode)
        )

    def updates(self, iteration: int) -> str:
        """`<run>/iter=NNNN/updates` (`updates` dataset)."""
        return join_uri(self.iteration_dir(iteration), "updates")

    def checkpoint(self, iteration: int) -> str:
        """`<run>/checkpoints/iter=NNNN`: the policy after `iteration - 1` updates."""
        return join_uri(self.run_dir, "checkpoints", iteration_name(iteration))

    def eval(self, checkpoint: str, reward_key: str) -> str:
        """`<run>/eval/<checkpoint>/<reward_key>` (`eval` dataset)."""
        return join_uri(self.run_dir, "eval", validate_checkpoint(checkpoint), validate_key(reward_key))

    def list_iterations(self) -> list[int]:
        """The iterations that have a directory, ascending."""
        fs, path = filesystem_for(self.run_dir, self.storage_options)
        found = (_ITER_DIR.fullmatch(name) for name in list_dirs(fs, path))
        return sorted(int(m.group(1)) for m in found if m)

    def list_checkpoints(self) -> list[int]:
        """The checkpoints that have a directory under `checkpoints/`, ascending."""
        fs, path = filesystem_for(join_uri(self.run_dir, "checkpoints"), self.storage_options)
        found = (_ITER_DIR.fullmatch(name) for name in list_dirs(fs, path))
        return sorted(int(m.group(1)) for m in found if m)

    def _subdirs(self, uri: str, pattern: re.Pattern[str]) -> list[str]:
        fs, path = filesystem_for(uri, self.storage_options)
        return [name for name in list_dirs(fs, path) if pattern.fullmatch(name) and ".." not in name]

    def list_rewards(self, iteration: int) -> list[str]:
        """The reward keys that have a directory under `iter=NNNN/rewards`, sorted."""
        return self._subdirs(join_uri(self.iteration_dir(iteration), "rewards"), _KEY)

    def list_annotations(self, iteration: int, reward_key: str) -> list[str]:
        """The modes that have a directory under `iter=NNNN/annotations/<reward_key>`, sorted."""
        uri = join_uri(self.iteration_dir(iteration), "annotations", validate_key(reward_key))
        return self._subdirs(uri, _KEY)

    def list_evals(self) -> list[tuple[str, str]]:
        """The `(checkpoint, reward_key)` pairs that have a directory under `eval/`, sorted."""
        base = join_uri(self.run_dir, "eval")
        return [
            (name, key)
            for name in self._subdirs(base, _CHECKPOINT)
            for key in self._subdirs(join_uri(base, name), _KEY)
        ]


def read_run_record(layout: RunLayout) -> dict[str, Any] | None:
    """The parsed `run.json` of a run: `run_id`, `config` (a mapping), `config_hash`, `code_version`,
    `created`; `None` when the run has none (no such run).

    Raises:
        `DataError`: `run.json` is damaged (not UTF-8 JSON, not an object, no `config` mapping), in one
            line naming the file and what to do.
    """
    fs, path = filesystem_for(layout.run_json(), layout.storage_options)
    if not exists(fs, path):
        return None
    try:
        data = read_bytes(fs, path)
    except FileNotFoundError:
        return None
    problem = None
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"not valid JSON ({err})" if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
    else:
        if not isinstance(record, dict):
            problem = f"a JSON {type(record).__name__}, not an object"
        elif not isinstance(record.get("config"), dict):
            problem = "holds no 'config' object"
    if problem is not None:
        raise DataError(
            f"run {layout.run_id!r} is damaged: {layout.run_json()}: {problem}; restore run.json from a "
            "backup (the run's datasets are untouched), or train into another --run-id"
        )
    return record


def write_run_record(layout: RunLayout, config: Mapping[str, Any], config_hash: str) -> None:
    """Write `run.json` (atomically): run id, the resolved public config, its hash, the code version
    and the creation time. `read_run_record` reads it back; nothing else opens `run.json`."""
    record = {
        "run_id": layout.run_id,
        "config": dict(config),
        "config_hash": config_hash,
        "code_version": code_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    fs, path = filesystem_for(layout.run_json(), layout.storage_options)
    write_atomic(fs, path, json.dumps(record, indent=1).encode())


def list_runs(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The run ids under `root` that have a `run.json`, sorted.

    Args:
        root (`str`): local path or `s3://bucket/prefix`.
        storage_options (`Mapping[str, Any]`, *optional*): S3 options.
    """
    fs, path = filesystem_for(root, storage_options)
    runs = []
    for name in list_dirs(fs, path):
        if _RUN_ID.fullmatch(name) and ".." not in name and exists(fs, f"{path}/{name}/run.json"):
            runs.append(name)
    return runs
