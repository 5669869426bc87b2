"""`rescore` and `annotate` never return a silent partial result: an iteration whose inputs are
missing or damaged is named on its own line, the others are done, and the exit code is 1 — unless
`--iters` left that iteration out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpgrpo.storage import read_manifest

from .conftest import StoredRun, run_cli

HOLD = (
    "import sys, time\nfrom tpgrpo.storage.lock import run_lock\n"
    "with run_lock(sys.argv[1], heartbeat_s=0.5):\n    print('held', flush=True)\n    time.sleep(120)\n"
)
NEW_SPEC = '{"name": "jpeg", "quality": 30, "key": "jpeg_q30"}'


def _break_manifest(run: StoredRun, relative: str) -> None:
    (run.dir / relative / "_MANIFEST.json").write_bytes(b"{ not json")


def _assert_skipped(result: object, iteration: int, *fragments: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    err = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    lines = [line for line in err.splitlines() if line.startswith(f"skipped iteration {iteration}:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert err.strip().splitlines()[-1].startswith("error: "), err
    assert f"skipped iteration(s) {iteration}" in err and "--iters" in err


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("unfinished", "is unfinished (its stage was interrupted)"),
        ("malformed", "malformed manifest"),
        ("missing", "is missing"),
    ],
)
def test_annotate_names_what_it_skipped(run_copy: StoredRun, damage: str, fragment: str) -> None:
    key = run_copy.reward_key
    rewards = run_copy.dir / "iter=0001" / "rewards" / key
    if damage == "unfinished":
        (rewards / "_MANIFEST.json").unlink()
    elif damage == "malformed":
        _break_manifest(run_copy, f"iter=0001/rewards/{key}")
    else:  # the key was scored for iteration 0 only (another key keeps the listing of iteration 1)
        shutil.rmtree(rewards)
        shutil.copytree(run_copy.dir / "iter=0001" / "branches", run_copy.dir / "iter=0001" / "rewards" / "x")
    result = run_cli("annotate", *run_copy.args("--reward", key, "--mode", "incremental"))
    _assert_skipped(result, 1, f"iter=0001/rewards/{key}", fragment)
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:2]] == [["0", "incremental"]]
    assert read_manifest(str(run_copy.dir / "iter=0000" / "annotations" / key / "incremental")).rows > 0
    assert not (run_copy.dir / "iter=0001" / "annotations" / key / "incremental").exists()
    excluded = run_cli("annotate", *run_copy.args("--reward", key, "--mode", "incremental", "--iters", "0"))
    assert excluded.exit_code == 0, excluded.output
    assert "skipped" not in excluded.output


def test_annotate_names_a_damaged_rollouts_input(run_copy: StoredRun) -> None:
    _break_manifest(run_copy, "iter=0000/rollouts")
    result = run_cli("annotate", *run_copy.args("--reward", run_copy.reward_key, "--mode", "tp"))
    _assert_skipped(result, 0, "iter=0000/rollouts", "malformed manifest")
    assert (
        run_copy.dir / "iter=0001" / "annotations" / run_copy.reward_key / "tp" / "_MANIFEST.json"
    ).is_file()


def test_rescore_names_what_it_skipped(run_copy: StoredRun) -> None:
    shutil.rmtree(run_copy.dir / "iter=0001" / "branches")
    result = run_cli("rescore", *run_copy.args("--reward", NEW_SPEC))
    _assert_skipped(result, 1, "iter=0001/branches is missing")
    assert (run_copy.dir / "iter=0000" / "rewards" / "jpeg_q30" / "_MANIFEST.json").is_file()
    assert not (run_copy.dir / "iter=0001" / "rewards" / "jpeg_q30").exists()
    excluded = run_cli("rescore", *run_copy.args("--reward", NEW_SPEC, "--iters", "0"))
    assert excluded.exit_code == 0, excluded.output
    assert "skipped" not in excluded.output


def test_selected_iteration_with_damaged_input_is_named_too(run_copy: StoredRun) -> None:
    (run_copy.dir / "iter=0001" / "branches" / "_MANIFEST.json").unlink()
    result = run_cli("rescore", *run_copy.args("--reward", NEW_SPEC, "--iters", "1"))
    _assert_skipped(result, 1, "iter=0001/branches is unfinished")
    assert "nothing was done" in result.stderr


def test_report_and_turning_points_name_damaged_annotations(run_copy: StoredRun, tmp_path: Path) -> None:
    """A damaged annotations dataset is not silently left out of the statistics and the report."""
    key, mode = run_copy.reward_key, run_copy.mode
    _break_manifest(run_copy, f"iter=0001/annotations/{key}/{mode}")
    stats = run_cli("audit", "turning-points", *run_copy.args())
    assert stats.exit_code == 1, stats.output
    assert (
        "left out iteration 1: iter=0001/annotations" in stats.stderr and "malformed manifest" in stats.stderr
    )
    assert "--force" in stats.stderr.strip().splitlines()[-1]
    out = str(tmp_path / "report")
    report = run_cli("report", *run_copy.args("--out", out))
    assert report.exit_code == 1, report.output
    assert "left out iteration 1:" in report.stderr and "Traceback" not in report.output
    assert Path(out, "index.html").is_file()  # the report of what is sound is still written


def test_report_of_a_run_being_trained_leaves_its_unfinished_iteration_out(
    run_copy: StoredRun, tmp_path: Path
) -> None:
    key, mode = run_copy.reward_key, run_copy.mode
    (run_copy.dir / "iter=0001" / "annotations" / key / mode / "_MANIFEST.json").unlink()
    out = str(tmp_path / "report")
    unlocked = run_cli("report", *run_copy.args("--out", out))
    assert unlocked.exit_code == 1 and "is unfinished" in unlocked.stderr, unlocked.output
    holder = subprocess.Popen(  # another process driving the run: a live lease on run.lock
        [sys.executable, "-c", HOLD, str(run_copy.dir / "run.lock")], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    try:
        live = run_cli("report", *run_copy.args("--out", out))
    finally:
        holder.kill()
        holder.wait()
    assert live.exit_code == 0, live.output
