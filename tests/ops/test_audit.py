"""`tpgrpo audit trajectory|turning-points|verify` on a real stored run (and broken copies of it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from tpgrpo.storage import read_table

from .conftest import StoredRun, assert_user_error, run_cli


def _trajectory_rows(run: StoredRun, iteration: int, traj: int) -> tuple[list[float], dict[str, list]]:
    flt = pc.field("trajectory_id") == traj
    rewards = read_table(run.layout.rewards(iteration, run.reward_key), "rewards", filter=flt).sort_by(
        "boundary"
    )
    ann = read_table(
        run.layout.annotations(iteration, run.reward_key, run.mode), "annotations", filter=flt
    ).sort_by("step")
    return rewards.column("score").to_pylist(), {c: ann.column(c).to_pylist() for c in ann.column_names}


def _traj_with_turning_point(run: StoredRun, iteration: int) -> int:
    ann = read_table(run.layout.annotations(iteration, run.reward_key, run.mode), "annotations")
    kept = ann.filter(pc.field("kept"))
    return int(kept.column("trajectory_id")[0].as_py()) if kept.num_rows else 0


def test_trajectory_table_is_what_was_stored(stored_run: StoredRun, tmp_path: Path) -> None:
    traj = _traj_with_turning_point(stored_run, 1)
    png = tmp_path / "strip.png"
    result = run_cli(
        "audit", "trajectory", *stored_run.args("--iter", "1", "--traj", str(traj), "--png", str(png))
    )
    assert result.exit_code == 0, result.output
    rho, ann = _trajectory_rows(stored_run, 1, traj)
    w = len(ann["step"])  # 3
    lines = result.stdout.splitlines()
    assert lines[0] == f"run {stored_run.run_id}  iteration 1  trajectory {traj}"
    assert f"trend Δ = rho_W - rho_0 = {rho[-1] - rho[0]:+.4f}" in result.stdout
    table = {int(line.split()[0]): line.split() for line in lines if line[:3].strip().isdigit()}
    assert sorted(table) == list(range(w + 1))
    for j in range(w):
        row = table[j]
        assert row[1] == str(j)  # grid index: the window starts at 0
        assert [float(v) for v in row[2:5]] == pytest.approx(
            [rho[j], ann["increment"][j], ann["aggregated"][j]], abs=5e-5
        )
        assert row[5:7] == ["yes" if ann["turning_point"][j] else "-", "yes" if ann["kept"][j] else "-"]
        assert [float(v) for v in row[7:9]] == pytest.approx(
            [ann["step_reward"][j], ann["advantage"][j]], abs=5e-5
        )
    assert float(table[w][2]) == pytest.approx(rho[w], abs=5e-5) and "(final image)" in lines[-5]
    kept = [j for j in range(w) if ann["kept"][j]]
    detected = [j for j in range(w) if ann["turning_point"][j]]
    assert lines[-3] == f"turning points: detected at steps {detected or 'none'}, kept at {kept or 'none'}"
    # the stored run trains every step (update.timestep_fraction 1), on this very annotation
    trained = (
        "none: its advantages are all 0 (advantage.skip_zero leaves it out)"
        if all(a == 0 for a in ann["advantage"])
        else f"all {w} (update.timestep_fraction 1)"
    )
    assert lines[-2] == f"trained steps: {trained}"
    assert result.stdout.strip().endswith(f"png: {png}")
    # the strip: W + 1 branch images side by side (each 64 px × 3), a kept turning point framed in red
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[1] == 6 + (w + 1) * (64 * 3 + 6)
    assert image.std() > 10  # not blank
    if kept:
        red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
        assert red.sum() > 3 * 64 * 3  # a frame, not a stray pixel


def test_trajectory_bad_arguments(stored_run: StoredRun) -> None:
    base = stored_run.args()
    assert_user_error(
        run_cli("audit", "trajectory", *base, "--iter", "7", "--traj", "0"),
        "iteration 7 outside run",
        "0 … 1",
    )
    assert_user_error(
        run_cli("audit", "trajectory", *base, "--iter", "0", "--traj", "99"),
        "trajectory 99 is not in iteration 0",
        "0 … 7",
    )
    assert_user_error(
        run_cli("audit", "trajectory", *base, "--iter", "0", "--traj", "0", "--mode", "greedy"),
        "unknown reward mode 'greedy'",
        "tp_constrained",
    )
    assert_user_error(
        run_cli("audit", "trajectory", *base, "--iter", "0", "--traj", "0", "--reward", "pickscore"),
        "no stored scores for reward key 'pickscore'",
        stored_run.reward_key,
    )
    assert_user_error(
        run_cli(
            "audit",
            "trajectory",
            "--run",
            "ghost",
            "--root",
            str(stored_run.root),
            "--iter",
            "0",
            "--traj",
            "0",
        ),
        "unknown run 'ghost'",
    )


def test_turning_points_per_iteration(stored_run: StoredRun) -> None:
    result = run_cli("audit", "turning-points", *stored_run.args())
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(
        f"run {stored_run.run_id}: turning points of reward {stored_run.reward_key}, mode tp_constrained"
    )
    for i in (0, 1):
        ann = read_table(
            stored_run.layout.annotations(i, stored_run.reward_key, stored_run.mode), "annotations"
        )
        step = ann.column("step").to_numpy()
        tp = ann.column("turning_point").to_numpy(zero_copy_only=False)
        kept = ann.column("kept").to_numpy(zero_copy_only=False)
        agg = ann.column("aggregated").to_numpy()
        block = out.split(f"iteration {i}: ")[1].split("\n\n")[0]
        assert block.startswith("8 trajectories × 3 trained steps")
        for j in range(3):
            assert f"  {j:>4}  {tp[step == j].mean():>8.3f}  {kept[step == j].mean():>6.3f}" in block
        assert f"detected +{int((tp & (agg > 0)).sum())}/-{int((tp & (agg < 0)).sum())}" in block
        assert f"kept +{int((kept & (agg > 0)).sum())}/-{int((kept & (agg < 0)).sum())}" in block
        # balancing keeps equal numbers of each sign whenever both occur (SPEC §5)
        pos, neg = int((kept & (agg > 0)).sum()), int((kept & (agg < 0)).sum())
        assert pos == neg or pos == 0 or neg == 0


def test_verify_a_clean_run(stored_run: StoredRun) -> None:
    result = run_cli("audit", "verify", *stored_run.args("--verbose"))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for item in (
        "run.json",
        "prompts (332 rows)",
        "checkpoints/iter=0000 (5 files)",
        "checkpoints/iter=0002 (5 files)",
        "iter=0001/rollouts (8 rows)",
        "iter=0001/branches (32 rows)",
        f"iter=0001/rewards/{stored_run.reward_key} (32 rows)",
        f"iter=0001/annotations/{stored_run.reward_key}/tp_constrained (24 rows)",
        "iter=0001/updates (2 rows)",
        f"eval/iter=0002.steps=4/{stored_run.reward_key} (6 rows)",
    ):
        assert f"ok     {item}" in out, item
    assert out.strip().endswith("datasets and checkpoints verified)") and "FAULT" not in out


def test_verify_lists_every_fault(run_copy: StoredRun) -> None:
    run = run_copy.dir
    key = run_copy.reward_key
    # 1. a flipped byte in a part file (same size: only the checksum can tell)
    part = run / "iter=0000/branches/part-00000-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    # 2. a hand-edited manifest (a metric and a recorded input)
    manifest = run / "iter=0001/updates/_MANIFEST.json"
    raw = json.loads(manifest.read_text())
    raw["metrics"]["loss_mean"] = 0.0
    raw["inputs"]["checkpoint"] = "0" * 64
    manifest.write_text(json.dumps(raw))
    # 3. a checkpoint file gone
    (run / "checkpoints/iter=0002/ema.safetensors").unlink()
    # 4. an interrupted stage: parts without manifest
    (run / f"iter=0001/annotations/{key}/tp_constrained/_MANIFEST.json").unlink()
    result = run_cli("audit", "verify", *run_copy.args())
    assert result.exit_code == 1, result.output
    faults = [line for line in result.stdout.splitlines() if line.startswith("FAULT")]
    expected = [
        "iter=0000/branches: part part-00000-00000.parquet fails its SHA-256 check",
        f"iter=0000/rewards/{key}: input 'branches' (iter=0000/branches) is missing, unfinished or corrupt",
        f"iter=0001/annotations/{key}/tp_constrained: unfinished (files but no _MANIFEST.json)",
        "iter=0001/updates: manifest hash does not match its content",
        "iter=0001/updates: input 'checkpoint' recorded hash 000000000000…",
        f"iter=0001/updates: input 'annotations' (iter=0001/annotations/{key}/tp_constrained) is missing",
        "checkpoints/iter=0002: file 'ema.safetensors' listed in the manifest is missing",
        f"eval/iter=0002.steps=4/{key}: input 'checkpoint' (checkpoints/iter=0002) is missing",
    ]
    for fragment in expected:
        assert any(fragment in f for f in faults), (fragment, faults)
    assert len(faults) == len(expected), faults
    assert result.stderr.startswith(f"error: run {run_copy.run_id}: {len(expected)} fault(s), listed above")
    assert "Traceback" not in result.output


def test_verify_checks_lineage_between_stages_and_iterations(run_copy: StoredRun) -> None:
    """Finished, intact datasets in the wrong place: only the recorded input hashes can tell."""
    run = run_copy.dir
    shutil.rmtree(run / "iter=0001/branches")
    shutil.copytree(run / "iter=0000/branches", run / "iter=0001/branches")
    shutil.rmtree(run / "checkpoints/iter=0002")
    shutil.copytree(run / "checkpoints/iter=0001", run / "checkpoints/iter=0002")
    result = run_cli("audit", "verify", *run_copy.args())
    assert result.exit_code == 1, result.output
    faults = "\n".join(line for line in result.stdout.splitlines() if line.startswith("FAULT"))
    key = run_copy.reward_key
    assert "iter=0001/branches: input 'rollouts' recorded hash" in faults  # built from iteration 0's rollouts
    assert f"iter=0001/rewards/{key}: input 'branches' recorded hash" in faults  # scored other branches
    assert "checkpoints/iter=0002: records iteration 1, expected 2" in faults
    assert "checkpoints/iter=0002: input 'rollouts' recorded hash" in faults  # points at iteration 0
    assert "checkpoints/iter=0002: input 'checkpoint' recorded hash" in faults
    assert "eval/iter=0002.steps=4" in faults  # evaluated another checkpoint 2
    assert "iter=0000" not in faults


def test_verify_unknown_run(stored_run: StoredRun) -> None:
    assert_user_error(
        run_cli("audit", "verify", "--run", "x", "--root", str(stored_run.root)), "unknown run 'x'"
    )


def test_trajectory_shows_the_seeded_step_subsets(tmp_path: Path) -> None:
    """With `update.timestep_fraction` < 1 the audit lists, per epoch, the steps the update trains
    (the subsets `trained_step_mask` draws for the trajectory), derived from the run's config."""
    from types import SimpleNamespace

    from tpgrpo.algorithm import trained_step_mask
    from tpgrpo.config import load_config_data
    from tpgrpo.report.trajectory import TrajectoryAudit, _trained_steps, format_trajectory
    from tpgrpo.storage import RunLayout

    cfg = load_config_data({"seed": 3, "update": {"timestep_fraction": 0.6, "epochs": 2}})
    ctx = SimpleNamespace(cfg=cfg, layout=RunLayout(str(tmp_path), "r"), storage_options={})
    adv = [0.5, -0.1, 0.0, 0.2, 0.3]
    trained, note = _trained_steps(ctx, 1, 7, 5, adv, "shapes", "tp")
    expected = [trained_step_mask(3, 1, e, np.array([7]), 5, 0.6)[0].nonzero()[0].tolist() for e in (0, 1)]
    assert trained == expected and all(len(t) == 3 for t in trained)  # floor(5 × 0.6) = 3
    assert note == (
        "update.timestep_fraction 0.6: 3 of 5 per epoch, a subset seeded by run seed, iteration, epoch and "
        "trajectory; iteration 1 has no finished update yet"
    )
    # all-zero advantages: skipped (advantage.skip_zero)
    assert _trained_steps(ctx, 1, 7, 5, [0.0] * 5, "shapes", "tp")[0] == [[], []]
    audit = TrajectoryAudit(
        run_id="r",
        iteration=1,
        trajectory_id=7,
        reward_key="shapes",
        mode="tp",
        prompt="p",
        prompt_id="p0",
        group_id=0,
        batch=0,
        seed=1,
        window_start=0,
        window_size=5,
        rho=[0.0] * 6,
        strict=[None] * 6,
        increment=[0.0] * 5,
        aggregated=[0.0] * 5,
        turning_point=[False] * 5,
        kept=[False] * 5,
        step_reward=[0.0] * 5,
        advantage=adv,
        trained=trained,
        trained_note=note,
    )
    last = format_trajectory(audit).splitlines()[-1]
    assert last == f"trained steps: epoch 0 {expected[0]}; epoch 1 {expected[1]} ({note})"
