"""Experiment tracking with the real libraries: `tpgrpo track` replays a stored run into TensorBoard
event files and an MLflow file store, and a training run with `tracking.*` logs as it goes; the
values are read back with TensorBoard's event reader and MLflow's client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import EVAL_STEPS, StoredRun, assert_user_error, run_cli


@pytest.fixture(autouse=True)
def _mlflow_file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3 keeps its file store for local use behind this switch (its server stores need a DB)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def mlflow_run(uri: str, experiment: str, run_id: str) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id], filter_string=f"tags.`tpgrpo.run_id` = '{run_id}'")
    return client, run.info.run_id


def history(client: Any, run: str, key: str) -> dict[int, float]:
    points = client.get_metric_history(run, key.replace("/", "."))
    assert len(points) == len({p.step for p in points}), "a step logged twice"
    return {p.step: p.value for p in points}


def test_track_replays_a_stored_run(stored_run: StoredRun, tmp_path: Path) -> None:
    from tpgrpo.storage import read_manifest, read_table

    board, uri = tmp_path / "tb", (tmp_path / "mlruns").as_uri()
    args = stored_run.args("--tensorboard", str(board), "--mlflow-uri", uri, "--experiment", "ops")
    result = run_cli("track", *args)
    assert result.exit_code == 0, result.output
    assert "sent 2 iteration(s) and 3 evaluation(s)" in result.stdout
    layout, key, mode = stored_run.layout, stored_run.reward_key, stored_run.mode
    client, run = mlflow_run(uri, "ops", stored_run.run_id)

    final = {i: read_manifest(layout.annotations(i, key, mode)).metrics["reward_final_mean"] for i in (0, 1)}
    grad = {
        i: sum(r[0] for r in read_table(layout.updates(i), "updates").column("grad_norm_by_step").to_pylist())
        / read_manifest(layout.updates(i)).rows
        for i in (0, 1)
    }
    score = {
        k: read_manifest(layout.eval(f"iter={k:04d}.steps={EVAL_STEPS}", key)).metrics["score"]
        for k in range(3)
    }
    for logged in (
        lambda tag: scalars(board, tag),
        lambda tag: history(client, run, tag),
    ):
        assert logged("annotate/reward_final_mean") == pytest.approx(final, rel=1e-6)
        assert logged("steps/grad_norm_by_step/j0") == pytest.approx(grad, rel=1e-6)
        assert logged(f"eval/{key}/{EVAL_STEPS}/score") == pytest.approx(score, rel=1e-6)
    params = client.get_run(run).data.params
    assert params["update.lr"] == "0.001" and params["reward.mode"] == mode

    again = run_cli("track", *args)  # everything is there: nothing is sent twice
    assert "sent 0 iteration(s) and 0 evaluation(s)" in again.stdout
    assert set(history(client, run, "annotate/reward_final_mean")) == {0, 1}
    assert set(scalars(board, "annotate/reward_final_mean")) == {0, 1}


def test_track_needs_a_destination(stored_run: StoredRun) -> None:
    assert_user_error(
        run_cli("track", *stored_run.args()), "nothing to track", "--tensorboard", "--mlflow-uri"
    )


def test_training_with_tracking_logs_each_iteration(
    ops_env: dict[str, str], ops_model: tuple[str, str], tmp_path: Path
) -> None:
    from tpgrpo.config import load_config_data
    from tpgrpo.flows.train import train

    model, reward = ops_model
    uri = (tmp_path / "mlruns").as_uri()
    cfg = load_config_data(
        {
            "name": "tracked",
            "iterations": 1,
            "model": {"path": model},
            "sampling": {"num_steps": 5},
            "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 1, "group_size": 4},
            "reward": {"spec": reward, "mode": "tp_constrained"},
            "update": {"micro_batch": 16},
            "tracking": {"tensorboard": True, "mlflow_uri": uri},
            "storage": {"root": str(tmp_path / "runs")},
        }
    )
    train(cfg, run_id="tracked")
    board = tmp_path / "runs" / "tracked" / "tensorboard"  # the default folder of a local run
    assert set(scalars(board, "update/loss_mean")) == {0}
    client, run = mlflow_run(uri, "tracked", "tracked")  # experiment: the config's name
    assert set(history(client, run, "tpgrpo/iteration")) == {0}
    train(cfg, run_id="tracked", iterations=2)  # a resume goes on in the same MLflow run
    assert set(history(client, run, "update/loss_mean")) == {0, 1}
    assert set(scalars(board, "update/loss_mean")) == {0, 1}
