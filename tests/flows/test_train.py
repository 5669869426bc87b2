"""The train flow end to end on the tiny model: datasets, manifests, lineage, loss statistics,
annotations equal to the algorithm on the stored rewards, and resuming after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load

from tpgrpo.algorithm import AnnotationConfig, advantages, annotate
from tpgrpo.config import load_config_data
from tpgrpo.storage import RunLayout, manifest_hash, read_manifest, read_table
from tpgrpo.storage.blobs import read_blob_manifest, read_blobs

from .conftest import one_torch_thread, small_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference_run(
    flow_pipeline: Path, prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> RunLayout:
    """Two iterations of the real train flow, in this process."""
    from tpgrpo.flows.train import train

    root = tmp_path_factory.mktemp("reference") / "runs"
    cfg = load_config_data(small_config(flow_pipeline, root))
    with one_torch_thread():  # as the CLI processes compared with it
        result = train(cfg, run_id="ref")
    assert result["iterations"] == 2
    return RunLayout(str(root), "ref")


def test_every_dataset_and_manifest(reference_run: RunLayout) -> None:
    layout = reference_run
    cfg = load_config_data(json.loads(Path(layout.run_json()).read_text())["config"])
    n = cfg.rollout.prompts_per_batch * cfg.rollout.batches_per_iteration * cfg.rollout.group_size  # 12
    # SPEC §2's window on the T = 4 shift-3 grid 1, .86, .60, .0089, 0: step 2 ends at σ' = .0089
    # (cps std .008, under the floor), so W = 2
    w = 2
    key, mode = "jpeg_incompressibility", "tp_constrained"
    for i in range(2):
        roll = read_manifest(layout.rollouts(i))
        assert roll.rows == n and roll.model_evals == n * cfg.sampling.num_steps
        assert roll.inputs == {
            "prompts": manifest_hash(layout.prompts()),
            "checkpoint": read_blob_manifest(layout.checkpoint(i)).hash,
        }
        br = read_manifest(layout.branches(i))
        assert br.rows == n * (w + 1) and br.inputs == {"rollouts": manifest_hash(layout.rollouts(i))}
        assert (
            read_table(layout.rollouts(i), "rollouts", columns=["window_size"]).column(0).to_pylist()
            == [w] * n
        )
        # T = 4, window 2, velocity reuse: (T-1) + (T-2) = 5 evaluations per trajectory (C(s_2) is the
        # final image: steps 2 and 3 are ODE steps)
        assert br.model_evals == 5 * n
        rw = read_manifest(layout.rewards(i, key))
        assert rw.rows == n * (w + 1) and rw.inputs == {"branches": manifest_hash(layout.branches(i))}
        an = read_manifest(layout.annotations(i, key, mode))
        assert an.rows == n * w
        up = read_table(layout.updates(i), "updates").to_pylist()
        assert [r["optimizer_step"] for r in up] == [2 * i + 1, 2 * i + 2]
        assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in up)
        for r in up:  # per trained step: the gradient norms split the step's gradient
            assert len(r["grad_norm_by_step"]) == len(r["clip_frac_by_step"]) == w
            assert all(np.isfinite(r["grad_norm_by_step"])) and sum(r["grad_norm_by_step"]) > 0
            assert len(r["adv_abs_by_step"]) == len(r["adv_nonzero_by_step"]) == w
        assert abs(up[0]["ratio_mean"] - 1.0) < 1e-4  # first pass of an iteration: same weights
        assert sum(r["samples"] for r in up) <= n * w
        ckpt = read_blob_manifest(layout.checkpoint(i + 1))
        assert ckpt.inputs["checkpoint"] == read_blob_manifest(layout.checkpoint(i)).hash
        assert ckpt.inputs["rollouts"] == manifest_hash(layout.rollouts(i))
        assert ckpt.meta["optimizer_step"] == 2 * (i + 1)
        # plain pyarrow reads every dataset without this package's readers
        assert pq.read_table(layout.branches(i)).num_rows == n * (w + 1)
    # the adapter moved away from its initialisation
    _, first = read_blobs(layout.checkpoint(0))
    _, last = read_blobs(layout.checkpoint(2))
    assert first["adapter.safetensors"] != last["adapter.safetensors"]


def test_annotations_match_the_algorithm(reference_run: RunLayout) -> None:
    layout = reference_run
    cfg = load_config_data(json.loads(Path(layout.run_json()).read_text())["config"])
    for i in range(2):
        roll = read_table(layout.rollouts(i), "rollouts", columns=["trajectory_id", "group_id", "batch"])
        roll = roll.sort_by("trajectory_id")
        rw = read_table(layout.rewards(i, "jpeg_incompressibility"), "rewards").sort_by(
            [("trajectory_id", "ascending"), ("boundary", "ascending")]
        )
        n = roll.num_rows
        rho = np.array(rw.column("score").to_pylist()).reshape(n, -1)  # [N, W+1]
        expected = annotate(
            rho,
            roll.column("batch").to_numpy(),
            AnnotationConfig("tp_constrained"),
            roll.column("trajectory_id").to_numpy(),
        )
        adv = advantages(expected.step_reward, roll.column("group_id").to_numpy(), clip=cfg.advantage.clip)
        an = read_table(
            layout.annotations(i, "jpeg_incompressibility", "tp_constrained"), "annotations"
        ).sort_by([("trajectory_id", "ascending"), ("step", "ascending")])
        w = rho.shape[1] - 1
        np.testing.assert_array_equal(
            np.array(an.column("increment").to_pylist()).reshape(n, w), expected.increment
        )
        np.testing.assert_array_equal(
            np.array(an.column("turning_point").to_pylist()).reshape(n, w), expected.turning_point
        )
        np.testing.assert_array_equal(np.array(an.column("kept").to_pylist()).reshape(n, w), expected.kept)
        np.testing.assert_array_equal(
            np.array(an.column("step_reward").to_pylist()).reshape(n, w), expected.step_reward
        )
        np.testing.assert_array_equal(np.array(an.column("advantage").to_pylist()).reshape(n, w), adv)


def _content(layout: RunLayout) -> dict[str, Any]:
    """Everything a run computed, without run ids and timestamps: dataset rows and checkpoint files."""
    out: dict[str, Any] = {}
    for i in range(2):
        for name, uri, schema in [
            ("rollouts", layout.rollouts(i), "rollouts"),
            ("branches", layout.branches(i), "branches"),
            ("rewards", layout.rewards(i, "jpeg_incompressibility"), "rewards"),
            ("annotations", layout.annotations(i, "jpeg_incompressibility", "tp_constrained"), "annotations"),
            ("updates", layout.updates(i), "updates"),
        ]:
            table = read_table(uri, schema)
            cols = [c for c in table.column_names if c != "run_id"]
            keys = [k for k in ("trajectory_id", "boundary", "step", "optimizer_step") if k in cols]
            out[f"{name}{i}"] = table.select(cols).sort_by([(k, "ascending") for k in keys]).to_pylist()
    for i in range(3):
        _, files = read_blobs(layout.checkpoint(i))
        for name, blob in files.items():
            if name.endswith(".safetensors"):  # compare tensors: the header's key order is not stable
                tensors = load(blob)
                out[f"checkpoint{i}/{name}"] = {k: v.numpy().tobytes() for k, v in sorted(tensors.items())}
            elif name != "state.json":  # state.json holds the process's RNG state
                out[f"checkpoint{i}/{name}"] = json.loads(blob)
    return out


def _cli(config: Path, run_id: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tpgrpo.cli.app", "train", str(config), "--run-id", run_id],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_resume_after_kill_inside_a_stage(
    reference_run: RunLayout, flow_pipeline: Path, prefect_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 while iteration 1's branch stage is writing, rerun the same command: the finished
    stages are skipped, the debris redone, and the run equals the uninterrupted one."""
    root = tmp_path / "runs"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(small_config(flow_pipeline, root)))
    layout = RunLayout(str(root), "ref")  # same id as the reference, another root
    proc = _cli(config, "ref", prefect_env)
    target = Path(layout.branches(1))
    deadline = time.time() + 600
    while not (target.exists() and any(target.iterdir())) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the kill point: {proc.stdout.read().decode()[-2000:]}"  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (target / "_MANIFEST.json").exists()  # killed inside the stage: debris
    resumed = _cli(config, "ref", prefect_env)
    output = resumed.communicate(timeout=900)[0].decode()
    assert resumed.returncode == 0, output[-3000:]
    assert _content(layout) == _content(reference_run)


def test_second_process_refused_while_locked(reference_run: RunLayout, prefect_env: dict[str, str]) -> None:
    from tpgrpo.errors import RunLockedError
    from tpgrpo.storage.lock import run_lock

    with (
        run_lock(reference_run.lock()),
        pytest.raises(RunLockedError, match="locked by pid"),
        run_lock(reference_run.lock()),
    ):
        pass
