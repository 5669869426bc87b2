"""Invalidating what was built from a rebuilt input: `tpgrpo runs invalidate`.

Checkpoints are a deterministic function of their inputs, so a stage rebuilt from the same inputs
writes the same bytes and every later dataset stays valid. When a rebuilt output differs (another
thread count, another code version, a hand-repaired input), every dataset and checkpoint built
from the old one is stale: the stages refuse them ("built from other inputs") and `audit verify`
lists them. `plan_invalidation` names exactly those, from an iteration and optionally a stage on:

- `--from K`: iteration K's datasets (everything built from checkpoint K) and all that follows;
- `--from K --after S`: only what iteration K built after stage S (S's own output and what came
  before stay), and all that follows;

"all that follows" is checkpoint K+1 on, every later iteration, and the evaluations of those
checkpoints. Checkpoint K, the prompts, `run.json` and earlier iterations are never touched.
`invalidate` removes them: first every manifest (so a crash half-way leaves debris, which the
stages clear, never a finished-looking dataset with parts missing), then the files.
"""

from __future__ import annotations

import re

from tpgrpo.errors import UserError
from tpgrpo.storage.blobs import BLOB_MANIFEST
from tpgrpo.storage.files import exists, remove_file, remove_tree
from tpgrpo.storage.layout import RunLayout
from tpgrpo.storage.manifest import MANIFEST_NAME
from tpgrpo.storage.uri import filesystem_for, join_uri

AFTER_STAGES = ("rollout", "branch", "score", "annotate")
"""Stages `--after` accepts (after `update`, invalidate from the next iteration instead)."""

_EVAL_CHECKPOINT = re.compile(r"iter=(\d{4,})(?:\..*)?")


def plan_invalidation(layout: RunLayout, start: int, after: str | None, reward_key: str) -> list[str]:
    """The existing URIs (directories) that `invalidate(layout, start, after, …)` would remove.

    Args:
        layout (`RunLayout`): the run.
        start (`int`): the iteration K to invalidate from.
        after (`str`, *optional*): keep iteration K's outputs up to this stage (one of
            `AFTER_STAGES`); None: all of iteration K.
        reward_key (`str`): the run's own reward key (`--after score` invalidates its annotations).

    Raises:
        `UserError`: an unknown `after` stage.
    """
    if after is not None and after not in AFTER_STAGES:
        hint = f" (after update, use --from {start + 1})" if after == "update" else ""
        raise UserError(f"unknown --after stage {after!r}; choose one of {', '.join(AFTER_STAGES)}{hint}")
    iteration_dir = layout.iteration_dir(start)
    here: list[str] = []
    if after is None:
        here = [iteration_dir]
    else:
        rewards, annotations = join_uri(iteration_dir, "rewards"), join_uri(iteration_dir, "annotations")
        here = {
            "rollout": [layout.branches(start), rewards, annotations, layout.updates(start)],
            "branch": [rewards, annotations, layout.updates(start)],
            "score": [join_uri(annotations, reward_key), layout.updates(start)],
            "annotate": [layout.updates(start)],
        }[after]
    later = [layout.iteration_dir(i) for i in layout.list_iterations() if i > start]
    checkpoints = [layout.checkpoint(k) for k in layout.list_checkpoints() if k > start]
    evals = []
    for name, key in layout.list_evals():
        match = _EVAL_CHECKPOINT.fullmatch(name)
        if match and int(match.group(1)) > start:
            evals.append(layout.eval(name, key))
    out = []
    for uri in [*here, *later, *checkpoints, *evals]:
        fs, path = filesystem_for(uri, layout.storage_options)
        if exists(fs, path):
            out.append(uri)
    return out


def invalidate(layout: RunLayout, targets: list[str]) -> None:
    """Removes `targets` (from `plan_invalidation`): every manifest under them first, then the files.

    Hold the run lock while calling it.
    """
    for uri in targets:
        fs, path = filesystem_for(uri, layout.storage_options)
        fs.invalidate_cache(path)
        for file in sorted(fs.find(path)):
            if file.rsplit("/", 1)[-1] in (MANIFEST_NAME, BLOB_MANIFEST):
                remove_file(fs, file)
    for uri in targets:
        fs, path = filesystem_for(uri, layout.storage_options)
        remove_tree(fs, path)
