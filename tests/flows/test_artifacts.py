"""The Prefect UI's view of a run, without a server: artifact keys, tables, markdown, the report
link, run names, and artifact calls that fail without raising."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from tpgrpo.flows import artifacts, names
from tpgrpo.flows.artifacts import (
    Progress,
    artifact_key,
    eval_row,
    iteration_markdown,
    key_part,
    metrics_table,
    percent,
    report_link,
    rescore_table,
    stage_key,
    stage_progress_key,
    summary_key,
)
from tpgrpo.pipeline.plan import Plan

PREFECT_KEY = re.compile(r"^[a-z0-9-]*$")  # prefect.types.names: lowercase letters, digits, dashes


@pytest.mark.parametrize(
    ("run_id", "piece"),
    [
        ("ref", "ref"),
        ("Exp_A.2", "exp-a-2"),  # lowercased; "_" and "." each become one dash
        ("a__b..c", "a-b-c"),  # a run of other characters is one dash
        ("x-", "x"),  # no dash at either end
    ],
)
def test_key_part(run_id: str, piece: str) -> None:
    assert key_part(run_id) == piece


def test_keys_are_prefect_keys_derived_from_the_run_id() -> None:
    keys = [
        stage_key("Exp_A.2", 3, "rollout"),
        stage_progress_key("Exp_A.2", 3, "branch"),
        summary_key("Exp_A.2", 3),
        artifact_key("Exp_A.2", "rescore", "jpeg_incompressibility"),
        artifact_key("Exp_A.2", "report"),
    ]
    assert keys == [
        "exp-a-2-it3-rollout",
        "exp-a-2-it3-branch-progress",
        "exp-a-2-it3-summary",
        "exp-a-2-rescore-jpeg-incompressibility",
        "exp-a-2-report",
    ]
    assert all(PREFECT_KEY.match(k) for k in keys)


def test_metrics_table_keeps_scalars_and_order() -> None:
    rows = metrics_table({"rows": 12, "score_mean": 0.25, "estimator": "exact", "ok": True, "v": [1, 2]})
    assert rows == [
        {"metric": "rows", "value": 12},
        {"metric": "score_mean", "value": 0.25},
        {"metric": "estimator", "value": "exact"},
        {"metric": "ok", "value": True},
        {"metric": "v", "value": "[1, 2]"},  # not a scalar: its text
    ]


ANNOTATE = {"reward_final_mean": 0.41234, "reward_initial_mean": 0.3, "turning_points": 5, "kept": 3}
UPDATE = {"optimizer_steps": 2, "loss_mean": 0.0123, "kl_mean": 1.5e-5}


def test_iteration_markdown_without_evaluations() -> None:
    text = iteration_markdown("ref", 0, ANNOTATE, UPDATE, {"rollout": 3.14, "update": 2.0})
    assert text.startswith("# Run `ref`, iteration 0\n")
    assert "| reward (final, mean) | 0.4123 (initial 0.3000) |" in text
    assert "| turning points | 5 detected, 3 kept after balancing |" in text
    assert "| loss (mean of 2 optimizer steps) | 0.0123 |" in text
    assert "| KL (mean) | 1.5e-05 |" in text
    assert "| time | 5.1 s (rollout 3.1 s, update 2.0 s) |" in text  # 3.14 + 2.0 = 5.14
    assert "None stored yet: `tpgrpo evaluate --run ref --checkpoint 1`." in text


def test_iteration_markdown_with_evaluations_and_missing_values() -> None:
    row = eval_row(1, "iter=0001", "jpeg", 10, {"steps": 4, "score": 0.5, "strict": None})
    text = iteration_markdown("ref", 0, {"reward_final_mean": 0.5}, {}, {}, [row])
    assert "| reward (final, mean) | 0.5000 |" in text  # no initial reward: nothing after it
    assert "| turning points | - detected, - kept after balancing |" in text
    assert "| loss (mean of - optimizer steps) | - |" in text and "| time | - |" in text
    assert "| 1 | jpeg | 4 | 10 | 0.5000 | - |" in text


def test_eval_row_takes_the_summary_columns() -> None:
    metrics = {
        "steps": 4,
        "replicates": 1,
        "prompts": "test",
        "n": 5,
        "score": 0.5,
        "strict": 0.2,
        "task_mean_strict": 0.25,
        "task.counting.n": 2,
        "task.counting.score": 0.4,
        "task.counting.strict": 0.5,
        "requirements.color": 0.9,
    }
    assert eval_row(2, "iter=0002", "shapes", 5, metrics) == {
        "checkpoint": 2,
        "eval": "iter=0002",
        "reward_key": "shapes",
        "steps": 4,
        "images": 5,
        "score": 0.5,
        "strict": 0.2,
        "task_mean_strict": 0.25,
        "task.counting.score": 0.4,
        "task.counting.strict": 0.5,
    }


def test_rescore_table_one_row_per_iteration_and_mode() -> None:
    annotated = {"reward_final_mean": 0.3, "turning_points": 4, "kept": 2}
    result = {
        "reward_key": "jpeg",
        "iterations": {
            1: {"score": {"rows": 36, "metrics": {"score_mean": 0.2}}, "annotations": {"incremental": {}}},
            0: {
                "score": {"rows": 36, "metrics": {"score_mean": 0.1}},
                "annotations": {"tp_constrained": annotated, "incremental": {}},
            },
        },
    }
    rows = rescore_table(result)
    assert [(r["iteration"], r["mode"]) for r in rows] == [
        (0, "tp_constrained"),
        (0, "incremental"),
        (1, "incremental"),
    ]
    assert rows[0] == {
        "iteration": 0,
        "mode": "tp_constrained",
        "reward_key": "jpeg",
        "scores": 36,
        "score_mean": 0.1,
        "reward_final_mean": 0.3,
        "turning_points": 4,
        "kept": 2,
    }


def test_report_link_local(tmp_path: Path) -> None:
    uri, description = report_link(str(tmp_path / "runs" / "ref"), "ref", str(tmp_path / "runs"))
    assert uri == (tmp_path / "runs" / "ref" / "report" / "index.html").as_uri()
    assert uri.startswith("file:///")
    assert f"tpgrpo report --run ref --root {tmp_path / 'runs'}" in description


def test_report_link_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri, _ = report_link("runs/ref", "ref", "runs")
    assert uri == (tmp_path / "runs" / "ref" / "report" / "index.html").as_uri()


def test_report_link_s3() -> None:
    uri, description = report_link("s3://bucket/runs/ref", "ref", "s3://bucket/runs")
    assert uri == "s3://bucket/runs/ref/report/index.html"
    assert "tpgrpo report --run ref --root s3://bucket/runs --out ref-report" in description
    assert "aws s3 cp --recursive ref-report s3://bucket/runs/ref/report/" in description


@pytest.mark.parametrize(
    ("done", "total", "pct"), [(0, 4, 0.0), (1, 4, 25.0), (4, 4, 100.0), (5, 4, 100.0), (0, 0, 100.0)]
)
def test_percent(done: int, total: int, pct: float) -> None:
    assert percent(done, total) == pct


def test_run_names() -> None:
    p = Plan(stage="rollout", iteration=3, output="", schema="rollouts", inputs={}, config_hash="")
    assert names.shard_run_name({"p": p, "shard": 0, "num_shards": 4}) == "rollout-it3-shard1of4"
    assert names.PREPARE.format(stage="branch", iteration=2) == "prepare-branch-it2"
    assert names.FINALIZE.format(p=p) == "finalize-rollout-it3"
    assert names.ANNOTATE_MODE.format(iteration=1, mode="incremental") == "annotate-it1-incremental"
    assert names.train_deployment_name("exp1", "configs/tiny.yaml") == "train-exp1"
    assert names.train_deployment_name(None, "/work/configs/sd35m_ocr.yaml") == "train-sd35m_ocr"


def _refuse(**kwargs: Any) -> Any:
    raise RuntimeError("the API is down")


def test_a_refused_artifact_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("create_table_artifact", "create_markdown_artifact", "create_link_artifact"):
        monkeypatch.setattr(artifacts.prefect_artifacts, name, _refuse)
    with caplog.at_level(logging.WARNING):
        assert artifacts.publish_table("ref-it0-score", [{"metric": "rows", "value": 1}], "d") is None
        assert artifacts.publish_markdown("ref-it0-summary", "# hi", "d") is None
        assert artifacts.publish_link("ref-report", "file:///x", "x", "d") is None
    assert caplog.text.count("not published: RuntimeError: the API is down") == 3


def test_progress_skips_updates_when_not_created(monkeypatch: pytest.MonkeyPatch) -> None:
    updates: list[float] = []
    monkeypatch.setattr(artifacts.prefect_artifacts, "create_progress_artifact", _refuse)
    monkeypatch.setattr(
        artifacts.prefect_artifacts, "update_progress_artifact", lambda **kw: updates.append(kw["progress"])
    )
    progress = Progress.start("ref-progress", 2, "d")
    progress.advance()
    assert progress.artifact_id is None and progress.done == 1 and updates == []


def test_progress_updates_to_100(monkeypatch: pytest.MonkeyPatch) -> None:
    made = uuid4()
    calls: list[tuple[str, float]] = []

    def create(**kw: Any) -> Any:
        calls.append(("create", kw["progress"]))
        return made

    def update(**kw: Any) -> Any:
        assert kw["artifact_id"] == made
        calls.append(("update", kw["progress"]))
        return made

    monkeypatch.setattr(artifacts.prefect_artifacts, "create_progress_artifact", create)
    monkeypatch.setattr(artifacts.prefect_artifacts, "update_progress_artifact", update)
    progress = Progress.start("ref-progress", 4, "d")
    progress.advance()
    progress.advance(3)
    assert calls == [("create", 0.0), ("update", 25.0), ("update", 100.0)]
