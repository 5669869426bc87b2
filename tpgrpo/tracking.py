"""Experiment tracking: a run's stored metrics sent to TensorBoard and MLflow.

Everything logged is read back from what the run stored, so live logging during `train` and a
replay of an old run (`tpgrpo track`) send the same values:

- per iteration i (step i): every numeric manifest metric of its datasets as `<stage>/<name>`
  (`rollout/…`, `branch/…`, `score/…`, `annotate/…`, `update/…`), each dataset's `compute_s` and
  `model_evals`, and the per-step diagnostics of its updates (mean over its optimizer steps) as
  `steps/<column>/j<j>` (`grad_norm_by_step`, `clip_frac_by_step`, `adv_abs_by_step`,
  `adv_nonzero_by_step`);
- per evaluation of checkpoint K (step K): `eval/<reward key>/<steps>/<metric>` for score, strict and
  the GenEval task mean;
- once: the run's config (credentials removed) as MLflow params and a TensorBoard text.

Sinks are optional packages (`pip install 'tpgrpo[tracking]'`). An MLflow run is found again by
its `tpgrpo.run_id` tag, so a resumed or replayed run continues its MLflow run and skips the
iterations and evaluations it already holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tpgrpo.errors import DataError, UserError
from tpgrpo.pipeline.catalog import eval_records
from tpgrpo.pipeline.context import RunContext
from tpgrpo.schemas.updates import BY_STEP
from tpgrpo.storage import RunLayout, read_manifest, read_table
from tpgrpo.storage.uri import is_s3

EXTRA = "pip install 'tpgrpo[tracking]'"
ITERATION_MARK = "tpgrpo/iteration"  # logged last for each iteration: "this step is complete"
EVAL_MARK = "tpgrpo/checkpoint_{key}_{steps}"


class Sink(Protocol):
    """Where metrics go."""

    def params(self, values: Mapping[str, str]) -> None: ...

    def metrics(self, step: int, values: Mapping[str, float]) -> None: ...

    def logged(self, key: str) -> set[int]:
        """The steps at which `key` was logged before (to skip on resume/replay)."""
        ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """Where it sends, in words (`TensorBoard DIR`, `MLflow URI`)."""
        ...


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"update": {"lr": 1e-3}}` → `{"update.lr": "0.001"}` (params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def iteration_metrics(
    layout: RunLayout, iteration: int, reward_key: str, mode: str, storage_options: Any = None
) -> dict[str, float] | None:
    """What iteration `iteration` stored, as flat metrics; None until its update is finished."""
    datasets = {
        "rollout": layout.rollouts(iteration),
        "branch": layout.branches(iteration),
        "score": layout.rewards(iteration, reward_key),
        "annotate": layout.annotations(iteration, reward_key, mode),
        "update": layout.updates(iteration),
    }
    out: dict[str, float] = {}
    for stage, uri in datasets.items():
        try:
            manifest = read_manifest(uri, storage_options)
        except DataError:
            return None  # unfinished: logged once its update is done
        for name, value in manifest.metrics.items():
            number = _numeric(value)
            if number is not None:
                out[f"{stage}/{name}"] = number
        out[f"{stage}/model_evals"] = float(manifest.model_evals)
        out[f"{stage}/compute_s"] = float(sum(manifest.timings.values()))
    updates = read_table(datasets["update"], "updates", storage_options=storage_options)
    for column in BY_STEP:
        if column not in updates.column_names:
            continue
        rows = [r for r in updates.column(column).to_pylist() if r]  # [optimizer steps][W]
        for j in range(min((len(r) for r in rows), default=0)):
            values = [r[j] for r in rows if r[j] is not None and math.isfinite(r[j])]
            if values:
                out[f"steps/{column}/j{j}"] = sum(values) / len(values)
    return out


def eval_metrics(ctx: RunContext) -> list[tuple[str, int, dict[str, float]]]:
    """`(mark, checkpoint, metrics)` of every finished evaluation of a checkpoint, from the run
    catalog's `eval_records` (an evaluation at the run's default steps is labelled with them)."""
    out = []
    for e in eval_records(ctx):
        if e.checkpoint is None:
            continue
        steps = e.steps if e.steps is not None else ctx.cfg.sampling.eval_steps
        values = {
            f"eval/{e.reward_key}/{steps}/{metric}": number
            for metric in ("score", "strict", "task_mean_strict")
            if (number := _numeric(e.metrics.get(metric))) is not None
        }
        if values:
            out.append((EVAL_MARK.format(key=e.reward_key, steps=steps), e.checkpoint, values))
    return out


@dataclass
class TensorBoardSink:
    """Event files under `log_dir` (torch.utils.tensorboard's writer)."""

    log_dir: str
    _writer: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UserError(f"tracking to TensorBoard needs the tensorboard package: {EXTRA}") from err
        self._writer = SummaryWriter(self.log_dir)

    def params(self, values: Mapping[str, str]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(values.items()))
        self._writer.add_text("config", text, 0)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def logged(self, key: str) -> set[int]:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        self._writer.flush()
        events = EventAccumulator(self.log_dir, size_guidance={"scalars": 0})  # 0: keep every event
        events.Reload()
        if key not in events.Tags().get("scalars", []):
            return set()
        return {e.step for e in events.Scalars(key)}

    def close(self) -> None:
        self._writer.close()

    def describe(self) -> str:
        return f"TensorBoard {self.log_dir}"


@dataclass
class MLflowSink:
    """An MLflow run (found again by its `tpgrpo.run_id` tag) in `experiment` at `uri`."""

    uri: str
    experiment: str
    run_id: str
    _client: Any = field(init=False, repr=False)
    _run: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise UserError(f"tracking to MLflow needs the mlflow package: {EXTRA}") from err
        self._client = MlflowClient(tracking_uri=self.uri)
        found = self._client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(self.experiment)
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`tpgrpo.run_id` = '{self.run_id}'", max_results=1
        )
        if runs:
            self._run = runs[0].info.run_id
        else:
            tags = {"tpgrpo.run_id": self.run_id, "mlflow.runName": self.run_id}
            self._run = self._client.create_run(experiment_id, tags=tags).info.run_id

    def params(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        known = self._client.get_run(self._run).data.params
        new = [Param(k, v[:6000]) for k, v in sorted(values.items()) if k not in known]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self._run, params=new[start : start + 100])

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k.replace("/", "."), v, now, step) for k, v in values.items()]
        for start in range(0, len(batch), 1000):
            self._client.log_batch(self._run, metrics=batch[start : start + 1000])

    def logged(self, key: str) -> set[int]:
        return {m.step for m in self._client.get_metric_history(self._run, key.replace("/", "."))}

    def close(self) -> None:
        self._client.set_terminated(self._run)

    def describe(self) -> str:
        return f"MLflow {self.uri}"


def default_tensorboard_dir(layout: RunLayout) -> str:
    """`<run>/tensorboard` for a local run; `./tensorboard/<run>` for a run on S3."""
    return f"./tensorboard/{layout.run_id}" if is_s3(layout.run_dir) else f"{layout.run_dir}/tensorboard"


def open_sinks(
    layout: RunLayout,
    experiment: str,
    *,
    tensorboard_dir: str | None = None,
    mlflow_uri: str | None = None,
) -> list[Sink]:
    """The sinks asked for (none when both are None)."""
    sinks: list[Sink] = []
    if tensorboard_dir is not None:
        sinks.append(TensorBoardSink(tensorboard_dir))
    if mlflow_uri is not None:
        sinks.append(MLflowSink(mlflow_uri, experiment, layout.run_id))
    return sinks


@dataclass
class Tracker:
    """Sends a run's stored metrics (`ctx`: a loaded run) to its sinks, each iteration and
    evaluation once per sink."""

    ctx: RunContext
    sinks: list[Sink]

    def log_config(self) -> None:
        values = flatten(self.ctx.cfg.public_dict())
        for sink in self.sinks:
            sink.params(values)

    def log_iterations(self, iterations: list[int] | None = None) -> int:
        """Log the given (default: every stored) finished iterations; returns how many were new to
        some sink."""
        ctx = self.ctx
        todo = ctx.layout.list_iterations() if iterations is None else iterations
        key, mode = ctx.reward_key(), ctx.cfg.reward.mode
        sent: set[int] = set()
        for sink in self.sinks:
            done = sink.logged(ITERATION_MARK)
            for i in todo:
                if i in done:
                    continue
                values = iteration_metrics(ctx.layout, i, key, mode, ctx.storage_options)
                if values is None:
                    continue
                sink.metrics(i, {**values, ITERATION_MARK: float(i)})
                sent.add(i)
        return len(sent)

    def log_evals(self) -> int:
        """Log every finished evaluation not logged yet; returns how many were new."""
        sent: set[tuple[str, int]] = set()
        found = eval_metrics(self.ctx)
        for sink in self.sinks:
            done = {mark: sink.logged(mark) for mark in {mark for mark, _, _ in found}}  # one read each
            for mark, checkpoint, values in found:
                if checkpoint in done[mark]:
                    continue
                sink.metrics(checkpoint, {**values, mark: float(checkpoint)})
                sent.add((mark, checkpoint))
        return len(sent)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def tracker_for(
    ctx: RunContext,
    *,
    tensorboard: str | None = None,
    mlflow_uri: str | None = None,
    experiment: str | None = None,
) -> Tracker | None:
    """A tracker for a loaded run: to the given destinations, else to the run's own `tracking.*`
    settings; None when neither names one.

    Raises:
        UserError: a tracking package is not installed.
    """
    t = ctx.cfg.tracking
    if tensorboard is None and mlflow_uri is None:
        tensorboard = (t.tensorboard_dir or default_tensorboard_dir(ctx.layout)) if t.tensorboard else None
        mlflow_uri = t.mlflow_uri
    if tensorboard is None and mlflow_uri is None:
        return None
    name = experiment or t.mlflow_experiment or ctx.cfg.name
    sinks = open_sinks(ctx.layout, name, tensorboard_dir=tensorboard, mlflow_uri=mlflow_uri)
    return Tracker(ctx, sinks)


def run_tracker(ctx: RunContext) -> Tracker | None:
    """The tracker a run's config asks for (`tracking.*`), its config logged; None when tracking is off.

    Raises:
        UserError: a tracking package is not installed.
    """
    tracker = tracker_for(ctx)
    if tracker is not None:
        tracker.log_config()
    return tracker
