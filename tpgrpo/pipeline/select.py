"""What an ops command works on: iteration ranges, reward specs, modes and checkpoints, validated.

Every function here turns a user's text into a value or raises one `UserError` that names the
problem and the fix; the CLI prints it and exits with code 2. The flows call the same functions,
so a deployment run with bad parameters fails the same way before any work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tpgrpo.config import SpecData
from tpgrpo.errors import DataError, UserError
from tpgrpo.pipeline.catalog import checkpoint_or_none, config_reward_key, finished_checkpoints
from tpgrpo.pipeline.context import RunContext
from tpgrpo.pipeline.spec import plain_spec

_RANGE = re.compile(r"\s*(\d*)\s*:\s*(\d*)\s*")
_SINGLE = re.compile(r"\s*(\d+)\s*")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def span(values: Sequence[int]) -> str:
    """Iterations as a message names them: `3 … 7` for a range, `1, 4` otherwise, `none`."""
    if not values:
        return "none"
    if list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]} … {values[-1]}" if len(values) > 1 else str(values[0])
    return ", ".join(str(v) for v in values)


def select_iterations(text: str | None, available: Sequence[int], *, run_id: str, what: str) -> list[int]:
    """The iterations `--iters` selects among `available`.

    Args:
        text (`str | None`): `K`, `A:B` (A … B−1, as a Python slice), `A:` or `:B`; None: all.
        available (`Sequence[int]`): the iterations that have what the command needs, ascending.
        run_id (`str`): for messages.
        what (`str`): what the available iterations have, for messages ("stored branches").

    Returns:
        `list[int]`: the selected iterations, ascending, non-empty.

    Raises:
        `UserError`: bad syntax, an empty range, or iterations outside `available`.
    """
    have = sorted(available)
    if not have:
        raise UserError(f"run {run_id!r} has no iterations with {what} yet; train it first (tpgrpo train)")
    if text is None:
        return have
    single = _SINGLE.fullmatch(text)
    ranged = _RANGE.fullmatch(text)
    if single:
        wanted = [int(single.group(1))]
    elif ranged:
        start = int(ranged.group(1)) if ranged.group(1) else have[0]
        stop = int(ranged.group(2)) if ranged.group(2) else have[-1] + 1
        wanted = list(range(start, stop))
        if not wanted:
            raise UserError(f"--iters {text!r} selects no iteration (A:B means A … B−1; use A < B)")
    else:
        raise UserError(f"invalid --iters {text!r}: use K, A:B (iterations A … B−1), A: or :B")
    if ranged and not ranged.group(2):
        wanted = [i for i in wanted if i in have] or wanted
    missing = [i for i in wanted if i not in have]
    if missing:
        raise UserError(
            f"iteration(s) {span(missing)} outside run {run_id!r}: iterations with {what} are {span(have)}"
        )
    return wanted


def select_with_skips(
    text: str | None, usable: Sequence[int], unusable: Mapping[int, str], *, run_id: str, what: str
) -> tuple[list[int], dict[int, str]]:
    """The iterations `--iters` selects, split into those to work on and those it must skip.

    Unlike `select_iterations`, a stored iteration whose inputs are missing or unreadable is not
    silently left out: it is returned with the reason, so the command can name it and fail after
    working on the others. Only `--iters` leaves an iteration out without a word.

    Args:
        text (`str | None`): as in `select_iterations`; None: every stored iteration.
        usable (`Sequence[int]`): iterations that have what the command needs.
        unusable (`Mapping[int, str]`): stored iterations that lack it, with the reason.
        run_id (`str`), what (`str`): for messages.

    Returns:
        (`list[int]`, `dict[int, str]`): the selected usable iterations and the selected unusable ones.

    Raises:
        `UserError`: bad syntax, an empty range, or iterations the run does not have.
    """
    stored = sorted({*usable, *unusable})
    if not stored:
        raise UserError(f"run {run_id!r} has no iterations with {what} yet; train it first (tpgrpo train)")
    wanted = select_iterations(text, stored, run_id=run_id, what=what)
    return [i for i in wanted if i not in unusable], {i: unusable[i] for i in wanted if i in unusable}


def skipped_error(run_id: str, skipped: Mapping[int, str], done: Sequence[int]) -> DataError:
    """The error a command exits with after skipping iterations (each was named on its own line)."""
    which = span(sorted(skipped))
    worked = f"worked on {span(list(done))}; " if done else "nothing was done; "
    return DataError(
        f"run {run_id!r}: skipped iteration(s) {which}, whose inputs are missing or damaged (listed "
        f"above); {worked}rebuild those inputs (tpgrpo train, tpgrpo stage …, or tpgrpo rescore for a "
        "rescored key), or leave the iterations out with --iters"
    )


def check_iteration(iteration: int, available: Sequence[int], *, run_id: str, what: str) -> int:
    """`iteration` if it is one of `available`, else a `UserError` naming the valid ones."""
    if iteration not in available:
        raise UserError(
            f"iteration {iteration} outside run {run_id!r}: "
            f"iterations with {what} are {span(sorted(available))}"
        )
    return iteration


def parse_reward_spec(text: str | dict[str, Any]) -> str | dict[str, Any]:
    """A reward spec from `--reward`: a registered name, or JSON like `{"name": "jpeg", "quality": 50}`.

    Only the syntax is checked here; `RunContext.reward_key` checks the name and parameters.

    Raises:
        `UserError`: invalid JSON, JSON that is not an object with a string `name`, or a malformed name.
    """
    if isinstance(text, dict):
        spec: SpecData = text
    else:
        stripped = text.strip()
        if stripped.startswith(("{", "[", '"')):
            try:
                spec = json.loads(stripped)
            except json.JSONDecodeError as err:
                raise UserError(
                    f"--reward {text!r} is not valid JSON ({err.msg} at column {err.colno}); "
                    """quote it for the shell, e.g. --reward '{"name": "jpeg", "quality": 50}'"""
                ) from None
        elif _NAME.fullmatch(stripped):
            return stripped
        else:
            raise UserError(
                f"invalid --reward {text!r}: give a registered reward name (e.g. shapes) or a JSON object "
                """like '{"name": "jpeg", "quality": 50}'"""
            )
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise UserError(f"--reward {text!r}: a JSON reward spec must be an object with a string 'name'")
    return spec


def check_modes(modes: Sequence[str]) -> list[str]:
    """The reward modes, validated against `tpgrpo.algorithm.MODES` (`all` expands to every mode)."""
    from tpgrpo.algorithm import MODES

    out: list[str] = []
    for mode in modes:
        chosen = list(MODES) if mode == "all" else [mode]
        for m in chosen:
            if m not in MODES:
                raise UserError(f"unknown reward mode {m!r}; choose one of {', '.join(MODES)} (or all)")
            if m not in out:
                out.append(m)
    return out


def check_reward_key(key: str, available: Sequence[str], *, run_id: str, iteration: int | None = None) -> str:
    """`key` if stored scores exist under it, else a `UserError` listing the stored keys."""
    from tpgrpo.storage import validate_key

    validate_key(key)
    if key not in available:
        where = f"iteration {iteration} of run {run_id!r}" if iteration is not None else f"run {run_id!r}"
        have = ", ".join(available) or "none"
        raise UserError(
            f"no stored scores for reward key {key!r} in {where} (stored: {have}); "
            "score them first with tpgrpo rescore --reward SPEC"
        )
    return key


def select_checkpoints(ctx: RunContext, text: str | None) -> list[int]:
    """`--checkpoint`: `K`, `latest` (default) or `all`, among the run's finished checkpoints.

    Raises:
        UserError: bad syntax or a checkpoint the run does not have.
    """
    have = finished_checkpoints(ctx)
    if not have:
        raise UserError(
            f"run {ctx.layout.run_id!r} has no finished checkpoint; train it first (tpgrpo train)"
        )
    if text is None or text == "latest":
        return [have[-1]]
    if text == "all":
        stranded = finished_after_gap(ctx, have[-1] + 1)
        if stranded:
            raise UserError(
                f"checkpoint {have[-1] + 1} of run {ctx.layout.run_id!r} is missing or unfinished while "
                f"later checkpoints ({', '.join(map(str, stranded))}) are finished: it was damaged or "
                f"deleted. See tpgrpo audit verify --run {ctx.layout.run_id}; rerunning tpgrpo train "
                "rebuilds it; --checkpoint K evaluates one finished checkpoint meanwhile"
            )
        return have
    if not text.strip().isdigit():
        raise UserError(f"invalid --checkpoint {text!r}: use K (0 is the base model), latest or all")
    k = int(text)
    if k not in have:
        raise UserError(
            f"checkpoint {k} outside run {ctx.layout.run_id!r}: its finished checkpoints are "
            f"{have[0]} … {have[-1]} (0 is the base model)"
        )
    return [k]


def finished_after_gap(ctx: RunContext, gap: int) -> list[int]:
    """Finished checkpoints after the unfinished or missing checkpoint `gap` (none while training
    is only in progress: then nothing exists after the checkpoint being written)."""
    later = [k for k in ctx.layout.list_checkpoints() if k > gap]
    return [k for k in later if checkpoint_or_none(ctx.layout.checkpoint(k), ctx.storage_options)]


def guard_training_data(
    ctx: RunContext, key: str, modes: list[str], force: bool, spec: SpecData | None = None
) -> None:
    """Refuse to write where the run's training data lives.

    Args:
        key: the reward key about to be written (scores and/or annotations).
        modes: the modes about to be annotated.
        force: whether finished outputs would be replaced.
        spec: the reward about to score (None: annotating stored scores only).

    Raises:
        UserError: `spec` is another reward under the run's own key, or `force` would replace the
            scores or annotations an update trained on.
    """
    if key != config_reward_key(ctx):
        return
    run = ctx.layout.run_id
    if spec is not None and plain_spec(spec) != plain_spec(ctx.cfg.reward.spec):
        raise UserError(
            f"reward key {key!r} holds the scores run {run!r} trained on; give the new reward another "
            f"""key, e.g. --reward '{{"name": ..., "key": "{key}_v2"}}'"""
        )
    if force and (spec is not None or ctx.cfg.reward.mode in modes):
        raise UserError(
            f"--force would replace the {key!r} scores or {ctx.cfg.reward.mode!r} annotations run {run!r} "
            "trained on; leave out --force, or rebuild them with tpgrpo stage --force"
        )
