"""What a run shows in the Prefect UI: artifacts, their keys and their contents.

Pure builders (keys, table rows, markdown, the report link) and thin `publish_*` calls of
`prefect.artifacts` that never raise: an artifact the API refuses (server down, bad payload) is a
warning in the flow run's log, never a failed run. Keys are stable, so every flow run of the same
run id adds a new version under the same key (the UI's Artifacts page shows the latest and the
history):

| key | what | flow |
|---|---|---|
| `<run>-it<I>-<stage>` (every stage) | table `metric`, `value` of the finished stage | train |
| `<run>-it<I>-<stage>-progress` (rollout, branch, score) | progress: shards finished | train |
| `<run>-it<I>-summary` | markdown: reward, turning points, loss, evaluations, time | train |
| `<run>-progress` | progress: stages finished of the flow run's iterations | train |
| `<run>-report` | link to `<run>/report/index.html` | train, evaluate |
| `<run>-evaluate` / `<run>-evaluate-progress` | table, a row per checkpoint / progress | evaluate |
| `<run>-rescore-<reward key>` / `…-progress` | table, a row per iteration and mode / progress | rescore |

`<run>` is the run id made a key piece (`key_part`): lowercase, each run of characters other than
letters and digits one dash (`Exp_A.2` → `exp-a-2`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import artifacts as prefect_artifacts
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from tpgrpo.storage.uri import is_s3

_NOT_KEY = re.compile(r"[^a-z0-9]+")


# --- keys


def key_part(text: str) -> str:
    """`text` as a piece of a Prefect artifact key: lowercase letters, digits and single dashes,
    no dash at either end (`"Exp_A.2"` → `"exp-a-2"`)."""
    return _NOT_KEY.sub("-", text.lower()).strip("-")


def artifact_key(run_id: str, *parts: str | int) -> str:
    """`<run>-<part>-…`, each piece made a `key_part`: a valid Prefect key a user can type."""
    return "-".join(piece for piece in (key_part(str(p)) for p in (run_id, *parts)) if piece)


def stage_key(run_id: str, iteration: int, stage: str) -> str:
    """The table of one stage of one iteration: `<run>-it3-rollout`."""
    return artifact_key(run_id, f"it{iteration}", stage)


def stage_progress_key(run_id: str, iteration: int, stage: str) -> str:
    """The shard progress of one sharded stage: `<run>-it3-rollout-progress`."""
    return artifact_key(run_id, f"it{iteration}", stage, "progress")


def summary_key(run_id: str, iteration: int) -> str:
    """The markdown summary of one iteration: `<run>-it3-summary`."""
    return artifact_key(run_id, f"it{iteration}", "summary")


# --- pure builders


def metrics_table(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A stage's metrics as table rows `[{"metric": name, "value": value}, …]`, in their order.

    Numbers, booleans and text stay as they are (Prefect shows NaN as empty); anything else (a
    list, a mapping) becomes its text.
    """
    return [
        {"metric": name, "value": v if v is None or isinstance(v, bool | int | float | str) else str(v)}
        for name, v in metrics.items()
    ]


def _num(value: Any, fmt: str = ".4f") -> str:
    """A number for markdown, `-` when absent (or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format(value, fmt)


def _seconds(seconds: Mapping[str, float]) -> str:
    """`12.3 s (rollout 3.1 s, branch 4.0 s)`, or `-` when nothing was timed."""
    if not seconds:
        return "-"
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
    return f"{sum(seconds.values()):.1f} s ({parts})"


def iteration_markdown(
    run_id: str,
    iteration: int,
    annotate: Mapping[str, Any],
    update: Mapping[str, Any],
    seconds: Mapping[str, float],
    evaluations: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The markdown summary of one trained iteration.

    Args:
        run_id (`str`): the run.
        iteration (`int`): the iteration (its rollouts sampled checkpoint `iteration`, its update
            wrote checkpoint `iteration + 1`).
        annotate (`Mapping[str, Any]`): the annotate metrics (`reward_final_mean`,
            `reward_initial_mean`, `turning_points`, `kept`, …).
        update (`Mapping[str, Any]`): the update metrics (`loss_mean`, `kl_mean`, `optimizer_steps`, …).
        seconds (`Mapping[str, float]`): wall seconds per stage in this flow run, by stage name.
        evaluations (`Sequence[Mapping[str, Any]]`): stored evaluations to list (`eval_row`'s keys).
    """
    reward = _num(annotate.get("reward_final_mean"))
    if "reward_initial_mean" in annotate:
        reward += f" (initial {_num(annotate.get('reward_initial_mean'))})"
    steps = update.get("optimizer_steps", "-")
    lines = [
        f"# Run `{run_id}`, iteration {iteration}",
        "",
        "| | |",
        "|---|---|",
        f"| reward (final, mean) | {reward} |",
        f"| turning points | {annotate.get('turning_points', '-')} detected, "
        f"{annotate.get('kept', '-')} kept after balancing |",
        f"| loss (mean of {steps} optimizer steps) | {_num(update.get('loss_mean'), '.4g')} |",
        f"| KL (mean) | {_num(update.get('kl_mean'), '.4g')} |",
        f"| time | {_seconds(seconds)} |",
        "",
        f"## Evaluations of checkpoints {iteration} and {iteration + 1}",
        "",
    ]
    if not evaluations:
        lines.append(f"None stored yet: `tpgrpo evaluate --run {run_id} --checkpoint {iteration + 1}`.")
        return "\n".join(lines) + "\n"
    lines += ["| checkpoint | reward | steps | images | score | strict |", "|---|---|---|---|---|---|"]
    for e in evaluations:
        lines.append(
            f"| {e.get('checkpoint', '-')} | {e.get('reward_key', '-')} | {e.get('steps', '-')} | "
            f"{e.get('images', '-')} | {_num(e.get('score'))} | {_num(e.get('strict'))} |"
        )
    return "\n".join(lines) + "\n"


def eval_row(
    checkpoint: int | None, name: str, reward_key: str, images: int, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """One stored evaluation as a row: `checkpoint, eval, reward_key, steps, images, score, strict`,
    then `task_mean_strict` and the per-task `task.<name>.score` / `.strict` columns it has.

    Args:
        metrics (`Mapping[str, Any]`): the evaluation's manifest metrics
            (`pipeline.evaluate.flat_metrics`).
    """
    row: dict[str, Any] = {
        "checkpoint": checkpoint,
        "eval": name,
        "reward_key": reward_key,
        "steps": metrics.get("steps"),
        "images": images,
        "score": metrics.get("score"),
        "strict": metrics.get("strict"),
    }
    for k, v in metrics.items():
        if k == "task_mean_strict" or (k.startswith("task.") and k.endswith((".score", ".strict"))):
            row[k] = v
    return row


def rescore_table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rescore flow's result (`flows.rescore.rescore_flow`) as rows, one per iteration and mode:
    `iteration, mode, reward_key, scores, score_mean, reward_final_mean, turning_points, kept`."""
    rows = []
    for i, out in sorted(result["iterations"].items()):
        score = out["score"]
        for mode, metrics in out["annotations"].items():
            rows.append(
                {
                    "iteration": i,
                    "mode": mode,
                    "reward_key": result["reward_key"],
                    "scores": score["rows"],
                    "score_mean": score["metrics"].get("score_mean"),
                    "reward_final_mean": metrics.get("reward_final_mean"),
                    "turning_points": metrics.get("turning_points"),
                    "kept": metrics.get("kept"),
                }
            )
    return rows


def report_link(run_dir: str, run_id: str, root: str) -> tuple[str, str]:
    """Where the run's HTML report lives, and how to build it.

    Args:
        run_dir (`str`): the run's folder (`RunLayout.run_dir`): a local path or `s3://…`.
        run_id (`str`): the run's id.
        root (`str`): the runs root, as `--root` takes it.

    Returns:
        `(uri, description)`: `file:///…/<run>/report/index.html` for a local run (an absolute path,
        from this process's working folder), `s3://…/<run>/report/index.html` for an S3 run; the
        description says how to build or refresh it.
    """
    build = f"tpgrpo report --run {run_id} --root {root}"
    if is_s3(run_dir):
        target = f"{run_dir.rstrip('/')}/report/"
        uri = f"{target}index.html"
        how = (
            f"`tpgrpo report` writes an S3 run's report locally: `{build} --out {run_id}-report`, then "
            f"upload it here: `aws s3 cp --recursive {run_id}-report {target}`."
        )
    else:
        uri = (Path(os.path.abspath(run_dir)) / "report" / "index.html").as_uri()
        how = f"Not built by the flows: build or refresh it with `{build}`."
    return uri, f"HTML report of run {run_id} (reward curves, turning points, image strips). {how}"


def percent(done: int, total: int) -> float:
    """`done` of `total` as a percentage in [0, 100] (100 when there is nothing to do)."""
    return 100.0 if total <= 0 else 100.0 * min(max(done, 0), total) / total


# --- thin Prefect calls that never raise


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:  # outside a flow or task run
        logging.getLogger(__name__).warning(message)


def _safely(what: str, call: Callable[..., Any], **kwargs: Any) -> UUID | None:
    """`call(**kwargs)` of a `prefect.artifacts` function (run synchronously even under an event
    loop: `_sync=True`), or None with a warning when it fails."""
    try:
        result = call(**kwargs, _sync=True)
    except Exception as err:  # the UI's view of a run must never cost the run itself
        _warn(f"artifact {what} not published: {type(err).__name__}: {err}")
        return None
    return result if isinstance(result, UUID) else None


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> UUID | None:
    """A table artifact (rows of equal keys); None when Prefect refused it (logged)."""
    return _safely(key, prefect_artifacts.create_table_artifact, table=rows, key=key, description=description)


def publish_markdown(key: str, markdown: str, description: str) -> UUID | None:
    """A markdown artifact; None when Prefect refused it (logged)."""
    return _safely(
        key, prefect_artifacts.create_markdown_artifact, markdown=markdown, key=key, description=description
    )


def publish_link(key: str, link: str, text: str, description: str) -> UUID | None:
    """A link artifact; None when Prefect refused it (logged)."""
    return _safely(
        key,
        prefect_artifacts.create_link_artifact,
        link=link,
        link_text=text,
        key=key,
        description=description,
    )


@dataclass
class Progress:
    """A progress artifact moved on as items finish; a failed create or update is logged, no more.

    Args:
        key (`str`): the artifact key.
        total (`int`): how many items make 100 %.
        description (`str`): shown beside the bar.
        done (`int`): items finished so far.
        artifact_id (`UUID`, *optional*): the artifact; None when Prefect refused to create it (then
            updates are skipped).
    """

    key: str
    total: int
    description: str
    done: int = 0
    artifact_id: UUID | None = None

    @classmethod
    def start(cls, key: str, total: int, description: str) -> Progress:
        """Create the artifact at 0 % (100 % when `total` is 0)."""
        progress = cls(key, total, description)
        progress.artifact_id = _safely(
            key,
            prefect_artifacts.create_progress_artifact,
            progress=percent(0, total),
            key=key,
            description=description,
        )
        return progress

    def advance(self, items: int = 1) -> None:
        """`items` more finished: update the bar."""
        self.done += items
        if self.artifact_id is None:
            return
        _safely(
            self.key,
            prefect_artifacts.update_progress_artifact,
            artifact_id=self.artifact_id,
            progress=percent(self.done, self.total),
        )
