"""`tpgrpo runs list|show` on a real stored run."""

from __future__ import annotations

from pathlib import Path

from .conftest import EVAL_STEPS, StoredRun, assert_user_error, run_cli


def test_list_shows_status_iterations_and_rewards(stored_run: StoredRun) -> None:
    from tpgrpo.storage import read_manifest

    result = run_cli("runs", "list", "--root", str(stored_run.root))
    assert result.exit_code == 0, result.output
    header, line = result.stdout.splitlines()
    assert header.split()[:4] == ["RUN", "STATUS", "ITERS", "REWARD"]
    fields = line.split()
    assert fields[:5] == [stored_run.run_id, "complete", "2/2", stored_run.reward_key, stored_run.mode]
    layout = stored_run.layout
    last_train = read_manifest(layout.annotations(1, stored_run.reward_key, stored_run.mode)).metrics
    last_eval = read_manifest(layout.eval(f"iter=0002.steps={EVAL_STEPS}", stored_run.reward_key)).metrics
    assert fields[5] == f"{last_train['reward_final_mean']:+.4f}"
    assert fields[6] == f"{last_eval['score']:+.4f}"


def test_list_of_an_empty_root(tmp_path: Path) -> None:
    result = run_cli("runs", "list", "--root", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"no runs under {tmp_path}")


def test_show_summarises_config_iterations_and_evaluations(stored_run: StoredRun) -> None:
    from tpgrpo.storage import read_manifest

    result = run_cli("runs", "show", stored_run.run_id, "--root", str(stored_run.root))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "status     complete, 2/2 iterations done" in out
    assert "T=5, window [0, 3)" in out and "2 prompt groups x G=4" in out
    assert f"(key {stored_run.reward_key}), mode tp_constrained" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:4].strip() in ("0", "1")}
    for i in (0, 1):
        metrics = read_manifest(
            stored_run.layout.annotations(i, stored_run.reward_key, stored_run.mode)
        ).metrics
        assert rows[str(i)][1] == "checkpoint"
        assert rows[str(i)][2:4] == [
            f"{metrics['reward_initial_mean']:+.4f}",
            f"{metrics['reward_final_mean']:+.4f}",
        ]
        assert rows[str(i)][4:6] == [str(metrics["turning_points"]), str(metrics["kept"])]
    for k in range(3):
        assert f"iter={k:04d}.steps={EVAL_STEPS}" in out
    assert "rescored   none" in out


def test_show_unknown_run(stored_run: StoredRun) -> None:
    result = run_cli("runs", "show", "nope", "--root", str(stored_run.root))
    assert_user_error(result, "unknown run 'nope'", stored_run.run_id)
