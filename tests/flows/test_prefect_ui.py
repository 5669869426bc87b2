"""What the Prefect UI shows of a run, read back from Prefect's API after real flow runs: flow and
task run names, the stage tables, the iteration summary, the report link, progress bars; and a
rescore whose every artifact call fails still completes (the failures are warnings in its log)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tpgrpo.storage import RunLayout, read_manifest

from .conftest import one_torch_thread, small_config

pytestmark = pytest.mark.integration

RUN_ID = "UI_run.1"  # its artifact key piece: "ui-run-1"
KEY = "ui-run-1"
SHARDS = 2


@dataclass(frozen=True)
class UiRun:
    """The stored run and what the flows returned.

    Args:
        layout (`RunLayout`): the run.
        rescored (`dict`): the rescore flow's result (run with every artifact call failing).
    """

    layout: RunLayout
    rescored: dict[str, Any]


def _refuse(**kwargs: Any) -> Any:
    raise RuntimeError("artifact API down")


@pytest.fixture(scope="module")
def ui_run(
    flow_pipeline: Path, prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> UiRun:
    """One iteration (2 shards) of the real train flow, an evaluation of checkpoints 0 and 1, and a
    rescore with `jpeg` while every `prefect.artifacts` call raises; all in this process."""
    from tpgrpo.config import load_config_data
    from tpgrpo.flows import artifacts
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.rescore import rescore
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import RunContext

    root = tmp_path_factory.mktemp("ui") / "runs"
    data = small_config(flow_pipeline, root, **{"rollout.batches_per_iteration": 1, "rollout.shards": SHARDS})
    cfg = load_config_data(data)
    ctx = RunContext.create(cfg, RUN_ID, str(root))
    with one_torch_thread():
        assert train(cfg, run_id=RUN_ID, iterations=1)["iterations"] == 1
        run_evaluation(ctx, checkpoint="all", steps=2, per_task=1)
        with pytest.MonkeyPatch.context() as mp:
            for name in (
                "create_table_artifact",
                "create_markdown_artifact",
                "create_link_artifact",
                "create_progress_artifact",
                "update_progress_artifact",
            ):
                mp.setattr(artifacts.prefect_artifacts, name, _refuse)
            rescored = rescore(ctx, "jpeg")
    return UiRun(ctx.layout, rescored)


def _flow_run(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def _artifacts(*keys: str) -> dict[str, Any]:
    """The latest artifact of each key, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))))
    latest: dict[str, Any] = {}
    for a in sorted(found, key=lambda a: a.created):
        latest[a.key] = a
    return latest


def test_flow_and_task_run_names(ui_run: UiRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    for command in ("train", "evaluate", "rescore"):
        run = _flow_run(f"{command}-{RUN_ID}")
        assert run.state is not None and run.state.is_completed(), (command, run.state)
    train_run = _flow_run(f"train-{RUN_ID}")
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[train_run.id])))
    names = {t.name for t in tasks}
    expected = {"check-worker", "init-run", "annotate-it0", "update-it0"}
    for stage in ("rollout", "branch", "score"):
        expected |= {f"prepare-{stage}-it0", f"finalize-{stage}-it0"}
        expected |= {f"{stage}-it0-shard{s}of{SHARDS}" for s in (1, 2)}
    assert names == expected


def test_a_table_per_stage_with_its_metrics(ui_run: UiRun) -> None:
    layout = ui_run.layout
    key, mode = "jpeg_incompressibility", "tp_constrained"
    manifests = {
        "rollout": read_manifest(layout.rollouts(0)),
        "branch": read_manifest(layout.branches(0)),
        "score": read_manifest(layout.rewards(0, key)),
        "annotate": read_manifest(layout.annotations(0, key, mode)),
        "update": read_manifest(layout.updates(0)),
    }
    found = _artifacts(*(f"{KEY}-it0-{stage}" for stage in manifests))
    train_run = _flow_run(f"train-{RUN_ID}")
    for stage, manifest in manifests.items():
        artifact = found[f"{KEY}-it0-{stage}"]
        assert artifact.type == "table" and artifact.flow_run_id == train_run.id
        rows = json.loads(artifact.data)
        table = {r["metric"]: r["value"] for r in rows}
        assert set(manifest.metrics) <= set(table), stage
        for name, value in manifest.metrics.items():
            assert table[name] == pytest.approx(value) if isinstance(value, float) else table[name] == value
        if stage in ("rollout", "branch", "score"):
            assert table["rows"] == manifest.rows and table["model_evals"] == manifest.model_evals


def test_iteration_summary_and_report_link(ui_run: UiRun) -> None:
    layout = ui_run.layout
    annotations = read_manifest(layout.annotations(0, "jpeg_incompressibility", "tp_constrained"))
    found = _artifacts(f"{KEY}-it0-summary", f"{KEY}-report")
    summary = found[f"{KEY}-it0-summary"]
    assert summary.type == "markdown"
    assert f"| reward (final, mean) | {annotations.metrics['reward_final_mean']:.4f}" in summary.data
    assert f"{annotations.metrics['turning_points']} detected" in summary.data
    link = found[f"{KEY}-report"]  # the latest: the evaluate flow's, the same link as train's
    report = (Path(layout.run_dir).resolve() / "report" / "index.html").as_uri()
    assert link.data == f"[report of run {RUN_ID}]({report})"
    assert f"tpgrpo report --run {RUN_ID} --root {layout.root}" in link.description


def test_progress_reached_100(ui_run: UiRun) -> None:
    keys = [f"{KEY}-it0-{stage}-progress" for stage in ("rollout", "branch", "score")]
    found = _artifacts(*keys, f"{KEY}-progress", f"{KEY}-evaluate-progress")
    assert set(found) == {*keys, f"{KEY}-progress", f"{KEY}-evaluate-progress"}
    for artifact in found.values():
        assert artifact.type == "progress" and float(artifact.data) == 100.0, artifact.key


def test_evaluate_table(ui_run: UiRun) -> None:
    artifact = _artifacts(f"{KEY}-evaluate")[f"{KEY}-evaluate"]
    rows = json.loads(artifact.data)
    assert [r["checkpoint"] for r in rows] == [0, 1]
    for r in rows:
        stored = read_manifest(ui_run.layout.eval(r["eval"], r["reward_key"]))
        assert r["images"] == stored.rows and r["score"] == pytest.approx(stored.metrics["score"])
    # what a later train flow's summary of iteration 0 would list: the same rows, from the stored
    # manifests (checkpoints 0 and 1)
    from tpgrpo.flows.train import _stored_evals
    from tpgrpo.pipeline.context import load_run

    listed = _stored_evals(load_run(RUN_ID, ui_run.layout.root), 0)
    assert [{k: r[k] for k in ("checkpoint", "eval", "images")} for r in listed] == [
        {k: r[k] for k in ("checkpoint", "eval", "images")} for r in rows
    ]


def test_failing_artifact_calls_do_not_fail_the_flow(ui_run: UiRun) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    assert sorted(ui_run.rescored["iterations"]) == [0]
    assert read_manifest(ui_run.layout.annotations(0, "jpeg", "tp_constrained")).rows > 0
    run = _flow_run(f"rescore-{RUN_ID}")
    assert run.state is not None and run.state.is_completed()
    assert _artifacts(f"{KEY}-rescore-jpeg", f"{KEY}-rescore-jpeg-progress") == {}
    deadline = time.monotonic() + 30  # logs reach the API in batches
    warnings: list[str] = []
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        warnings = [log.message for log in logs if "not published: RuntimeError" in log.message]
        if len(warnings) >= 2:
            break
        time.sleep(0.5)
    # the progress bar (its updates are skipped once its creation failed) and the table
    assert sorted(w.split(" not published")[0] for w in warnings) == [
        f"artifact {KEY}-rescore-jpeg",
        f"artifact {KEY}-rescore-jpeg-progress",
    ]
