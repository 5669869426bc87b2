"""What is stored for a run: status, finished iterations, rewards, costs and evaluations.

Reads only manifests (`_MANIFEST.json`, `_CHECKPOINT.json`) and `run.json`, never the Parquet data,
so listing many runs stays cheap; the one exception is `run_windows` (two integer columns of each
rollouts dataset), which `runs show` and `report` call for one run. Used by `tpgrpo runs`,
`tpgrpo audit` and `tpgrpo report`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tpgrpo.errors import DataError
from tpgrpo.storage import MANIFEST_NAME, Manifest, RunLayout, read_manifest, read_run_record
from tpgrpo.storage.blobs import BLOB_MANIFEST, BlobManifest, read_blob_manifest
from tpgrpo.storage.files import list_files
from tpgrpo.storage.lock import lease_holder
from tpgrpo.storage.reader import check_parts
from tpgrpo.storage.uri import filesystem_for

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

DATASET_STAGES = ("rollouts", "branches", "rewards", "annotations", "updates")
_EVAL_NAME = re.compile(r"iter=(\d{4,})(?:\.steps=(\d+))?")


def dataset_status(uri: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """`"done"` (manifest present), `"debris"` (files, no manifest) or `"missing"`, from one listing."""
    fs, path = filesystem_for(uri, storage_options)
    listing = list_files(fs, path)
    if not listing:
        return "missing"
    return "done" if MANIFEST_NAME in listing or BLOB_MANIFEST in listing else "debris"


def manifest_or_none(uri: str, storage_options: Mapping[str, Any] | None = None) -> Manifest | None:
    """The manifest of a finished dataset, or `None` when it is unfinished or absent."""
    try:
        return read_manifest(uri, storage_options)
    except DataError:
        return None


def checkpoint_or_none(uri: str, storage_options: Mapping[str, Any] | None = None) -> BlobManifest | None:
    """The manifest of a finished checkpoint, or `None`."""
    try:
        return read_blob_manifest(uri, storage_options)
    except DataError:
        return None


def parse_time(stamp: str | None) -> datetime | None:
    """An ISO 8601 `created` stamp as an aware datetime (None when absent or unreadable)."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


@dataclass
class IterationRecord:
    """One iteration as its manifests tell it (rewards of the run's own reward key and mode)."""

    iteration: int
    stages: dict[str, str]  # rollouts/branches/rewards/annotations/updates/checkpoint -> status
    reward_initial: float | None = None  # mean ρ_0 (the ODE completion of the initial noise)
    reward_final: float | None = None  # mean ρ_W (the final images)
    turning_points: int | None = None
    kept: int | None = None
    loss: float | None = None
    model_evals: int = 0  # rollout + branch + update of this iteration
    sampling_evals: int = 0  # rollout + branch: spent before its rewards exist
    compute_s: float = 0.0  # summed `compute_s` of this iteration's datasets
    rewards_created: datetime | None = None  # when its scores were finished
    finished: datetime | None = None  # when checkpoint `iteration + 1` was written

    @property
    def done(self) -> bool:
        return self.stages.get("updates") == "done" and self.stages.get("checkpoint") == "done"


@dataclass
class EvalRecord:
    """One finished evaluation dataset."""

    name: str  # eval/<name>/: `iter=0002` or `iter=0002.steps=10`
    reward_key: str
    checkpoint: int | None
    steps: int | None
    rows: int
    metrics: dict[str, Any]
    created: datetime | None
    model_evals: int


@dataclass
class RunInfo:
    """A stored run at a glance."""

    run_id: str
    created: datetime | None
    config: Any  # tpgrpo.config.Config
    status: str  # running | complete | interrupted | incomplete | new
    iterations: list[IterationRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    reward_key: str = ""  # the key of the run's own reward
    holder: dict[str, Any] | None = None
    reward_keys: dict[int, list[str]] = field(default_factory=dict)  # iteration -> stored reward keys

    @property
    def iterations_done(self) -> int:
        """Iterations finished in a row from 0 (updates and the next checkpoint written)."""
        n = 0
        for rec in self.iterations:
            if rec.iteration != n or not rec.done:
                break
            n += 1
        return n

    @property
    def last(self) -> IterationRecord | None:
        """The latest iteration with scores."""
        scored = [r for r in self.iterations if r.reward_final is not None]
        return scored[-1] if scored else None

    def last_eval(self) -> EvalRecord | None:
        """The evaluation of the latest checkpoint (the config's eval steps preferred)."""
        mine = [e for e in self.evals if e.checkpoint is not None]
        if not mine:
            return None
        standard = [e for e in mine if e.steps == self.config.sampling.eval_steps] or mine
        return max(standard, key=lambda e: (e.checkpoint, e.reward_key == self.reward_key))


def config_reward_key(ctx: RunContext) -> str:
    """The storage key of the run's own reward.

    Found from the manifests (the rewards dataset whose config hash is the config spec's), else
    from the spec (`RunContext.reward_key`): listing runs never loads a reward model.
    """
    from tpgrpo.pipeline.lineage import score_config_hashes

    wanted = score_config_hashes(ctx.cfg.reward.spec)
    for i in ctx.layout.list_iterations():
        for key in ctx.layout.list_rewards(i):
            m = manifest_or_none(ctx.layout.rewards(i, key), ctx.storage_options)
            if m is not None and m.config_hash in wanted:
                return str(key)
    return str(ctx.reward_key())


def run_created(layout: RunLayout, storage_options: Mapping[str, Any] | None = None) -> datetime | None:
    """The `created` stamp of `run.json`.

    Raises:
        `DataError`: `run.json` is damaged.
    """
    record = read_run_record(RunLayout(layout.root, layout.run_id, storage_options))
    created = record.get("created") if record is not None else None
    return parse_time(created if isinstance(created, str) else None)


def iteration_record(ctx: RunContext, iteration: int, reward_key: str) -> IterationRecord:
    """The manifests of one iteration, summarised (`ctx`: a `RunContext`)."""
    layout, opts, mode = ctx.layout, ctx.storage_options, ctx.cfg.reward.mode
    uris = {
        "rollouts": layout.rollouts(iteration),
        "branches": layout.branches(iteration),
        "rewards": layout.rewards(iteration, reward_key),
        "annotations": layout.annotations(iteration, reward_key, mode),
        "updates": layout.updates(iteration),
    }
    rec = IterationRecord(iteration, {})
    manifests: dict[str, Manifest] = {}
    for stage, uri in uris.items():
        m = manifest_or_none(uri, opts)
        rec.stages[stage] = "done" if m is not None else dataset_status(uri, opts)
        if m is not None:
            manifests[stage] = m
    ckpt = checkpoint_or_none(layout.checkpoint(iteration + 1), opts)
    rec.stages["checkpoint"] = (
        "done" if ckpt is not None else dataset_status(layout.checkpoint(iteration + 1), opts)
    )
    for stage in ("rollouts", "branches", "updates"):
        if stage in manifests:
            rec.model_evals += manifests[stage].model_evals
            if stage != "updates":
                rec.sampling_evals += manifests[stage].model_evals
    rec.compute_s = sum(float(m.timings.get("compute_s", 0.0)) for m in manifests.values())
    if "annotations" in manifests:
        metrics = manifests["annotations"].metrics
        rec.reward_initial = _float(metrics.get("reward_initial_mean"))
        rec.reward_final = _float(metrics.get("reward_final_mean"))
        rec.turning_points = _int(metrics.get("turning_points"))
        rec.kept = _int(metrics.get("kept"))
    if "rewards" in manifests:
        rec.rewards_created = parse_time(manifests["rewards"].created)
    if "updates" in manifests:
        rec.loss = _float(manifests["updates"].metrics.get("loss_mean"))
    if ckpt is not None:
        rec.finished = parse_time(ckpt.created)
    return rec


def eval_records(ctx: RunContext) -> list[EvalRecord]:
    """Every finished evaluation of the run, by checkpoint then reward key."""
    out = []
    for name, key in ctx.layout.list_evals():
        m = manifest_or_none(ctx.layout.eval(name, key), ctx.storage_options)
        if m is None:
            continue
        match = _EVAL_NAME.fullmatch(name)
        checkpoint = int(match.group(1)) if match else None
        steps = int(match.group(2)) if match and match.group(2) else _int(m.metrics.get("steps"))
        out.append(
            EvalRecord(name, key, checkpoint, steps, m.rows, m.metrics, parse_time(m.created), m.model_evals)
        )
    return sorted(out, key=lambda e: (-1 if e.checkpoint is None else e.checkpoint, e.name, e.reward_key))


def run_info(ctx: RunContext, *, with_evals: bool = True) -> RunInfo:
    """Status, per-iteration records and evaluations of a stored run (`ctx`: a `RunContext`)."""
    layout, opts, cfg = ctx.layout, ctx.storage_options, ctx.cfg
    key = config_reward_key(ctx)
    info = RunInfo(layout.run_id, run_created(layout, opts), cfg, "new", reward_key=key)
    for i in layout.list_iterations():
        info.iterations.append(iteration_record(ctx, i, key))
        info.reward_keys[i] = layout.list_rewards(i)
    if with_evals:
        info.evals = eval_records(ctx)
    info.holder = lease_holder(layout.lock(), opts)
    debris = any(s == "debris" for r in info.iterations for s in r.stages.values())
    if info.holder is not None:
        info.status = "running"
    elif info.iterations_done >= cfg.iterations:
        info.status = "complete"
    elif debris:
        info.status = "interrupted"
    elif info.iterations:
        info.status = "incomplete"
    return info


def stage_reached(rec: IterationRecord) -> str:
    """The last finished stage of an iteration, e.g. `"branches"`, or `"-"`."""
    done = [s for s in (*DATASET_STAGES, "checkpoint") if rec.stages.get(s) == "done"]
    return done[-1] if done else "-"


def finished_iterations(ctx: RunContext, stage: str, reward_key: str | None = None) -> list[int]:
    """The iterations whose `stage` dataset (`rewards`: of `reward_key`) is finished."""
    layout, opts = ctx.layout, ctx.storage_options
    out = []
    for i in layout.list_iterations():
        uri = layout.rewards(i, reward_key or "") if stage == "rewards" else getattr(layout, stage)(i)
        if manifest_or_none(uri, opts) is not None:
            out.append(i)
    return out


def usable_iterations(
    ctx: RunContext, stages: tuple[str, ...], reward_key: str | None = None
) -> tuple[list[int], dict[int, str]]:
    """Every stored iteration, split by whether its `stages` datasets (`rewards`: of `reward_key`)
    are finished and readable (manifest parses, part files listed as recorded).

    Returns:
        (`list[int]`, `dict[int, str]`): the usable iterations, and for each other one what is wrong
        with its inputs, one line (missing, unfinished, or an unreadable manifest).
    """
    layout, opts = ctx.layout, ctx.storage_options
    prefix = layout.run_dir.rstrip("/") + "/"
    usable: list[int] = []
    unusable: dict[int, str] = {}
    for i in layout.list_iterations():
        problems = []
        for stage in stages:
            uri = layout.rewards(i, reward_key or "") if stage == "rewards" else getattr(layout, stage)(i)
            where = uri.removeprefix(prefix)
            status = dataset_status(uri, opts)
            if status == "missing":
                problems.append(f"{where} is missing")
            elif status == "debris":
                problems.append(f"{where} is unfinished (its stage was interrupted)")
            else:
                try:
                    manifest = read_manifest(uri, opts)
                    fs, path = filesystem_for(uri, opts)
                    check_parts(fs, path, manifest, uri)  # one listing: missing, resized or stray parts
                except DataError as err:
                    problems.append(str(err).removeprefix(prefix))
        if problems:
            unusable[i] = "; ".join(problems)
        else:
            usable.append(i)
    return usable, unusable


def annotation_iterations(ctx: RunContext, key: str, mode: str) -> tuple[list[int], dict[int, str]]:
    """The iterations with finished `key`/`mode` annotations, and those whose annotations are there
    but cannot be used, each with the reason: an unreadable manifest, or an unfinished folder while
    no process holds the run's lock (a live run is writing it: left out without a word).

    Iterations without that folder at all (a mode never annotated there) are in neither.
    """
    layout, opts = ctx.layout, ctx.storage_options
    prefix = layout.run_dir.rstrip("/") + "/"
    live = lease_holder(layout.lock(), opts) is not None
    usable: list[int] = []
    damaged: dict[int, str] = {}
    for i in layout.list_iterations():
        uri = layout.annotations(i, key, mode)
        status = dataset_status(uri, opts)
        if status == "missing":
            continue
        if status == "debris":
            if not live:
                damaged[i] = f"{uri.removeprefix(prefix)} is unfinished (its stage was interrupted)"
            continue
        try:
            read_manifest(uri, opts)
        except DataError as err:
            damaged[i] = str(err).removeprefix(prefix)
            continue
        usable.append(i)
    return usable, damaged


def left_out_error(run_id: str, key: str, mode: str, damaged: Mapping[int, str]) -> DataError:
    """The error `report` and `audit turning-points` exit with after leaving out damaged iterations
    (each named on its own line before)."""
    first = min(damaged)
    return DataError(
        f"run {run_id!r}: left out iteration(s) {', '.join(str(i) for i in sorted(damaged))}, whose "
        f"{key}/{mode} annotations are damaged (listed above); rebuild them, e.g. tpgrpo annotate --run "
        f"{run_id} --reward {key} --mode {mode} --iters {first} --force"
    )


def finished_checkpoints(ctx: RunContext) -> list[int]:
    """The checkpoint indices `K` whose `checkpoints/iter=K` is finished (0 is the base model)."""
    out = []
    k = 0
    while checkpoint_or_none(ctx.layout.checkpoint(k), ctx.storage_options) is not None:
        out.append(k)
        k += 1
    return out


def rollout_window(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[int, int] | None:
    """`(w0, W)` the finished rollouts dataset at `uri` was sampled with (None when it is unfinished).

    The window is what the rollouts record, not what the config says: a `window_size: null` run
    written before SPEC §2's floor rule has `W = T − 1`, one written after has the floor window.
    """
    from tpgrpo.storage import read_table

    if manifest_or_none(uri, storage_options) is None:
        return None
    table = read_table(
        uri, "rollouts", columns=["window_start", "window_size"], storage_options=storage_options
    )
    if table.num_rows == 0:
        return None
    return int(table.column("window_start")[0].as_py()), int(table.column("window_size")[0].as_py())


def run_windows(ctx: RunContext) -> dict[int, tuple[int, int]]:
    """Iteration -> the SDE window `(w0, W)` of its finished rollouts."""
    out = {}
    for i in ctx.layout.list_iterations():
        window = rollout_window(ctx.layout.rollouts(i), ctx.storage_options)
        if window is not None:
            out[i] = window
    return out


def format_windows(windows: Mapping[int, tuple[int, int]], cfg: Any) -> str:
    """The window(s) of a run in words: the stored ones by iteration range, or the config's rule."""
    if not windows:
        s = cfg.sampling
        if s.window_size is None:
            return f"default from step {s.window_start} (SPEC §2 floor, on the model's grid; no rollouts yet)"
        return f"[{s.window_start}, {s.window_start + s.window_size}) (config; no rollouts yet)"
    spans: list[tuple[int, int, tuple[int, int]]] = []  # (first, last iteration, window)
    for i in sorted(windows):
        if spans and spans[-1][2] == windows[i] and spans[-1][1] == i - 1:
            spans[-1] = (spans[-1][0], i, windows[i])
        else:
            spans.append((i, i, windows[i]))
    if len(spans) == 1:
        w0, w = spans[0][2]
        return f"[{w0}, {w0 + w})"
    return "; ".join(
        f"[{w0}, {w0 + w}) in iteration{'s' if a != b else ''} {a}{f'–{b}' if a != b else ''}"
        for a, b, (w0, w) in spans
    )


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
