"""`tpgrpo runs compare` on two real stored runs: the table of final figures, the plots, the page."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from .conftest import EVAL_STEPS, StoredRun, assert_user_error, run_cli


def two_runs(stored_run: StoredRun, tmp_path: Path) -> Path:
    """Runs `a` (as stored) and `b` (the same, its evaluation of checkpoint 2 removed) in one root."""
    root = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(stored_run.dir, root / name)
    shutil.rmtree(root / "b" / "eval" / f"iter=0002.steps={EVAL_STEPS}")
    return root


def test_compare_two_runs(stored_run: StoredRun, tmp_path: Path) -> None:
    from tpgrpo.cli.common import load_run
    from tpgrpo.report.runs import run_info
    from tpgrpo.storage import read_manifest

    root = two_runs(stored_run, tmp_path)
    out = tmp_path / "cmp"
    result = run_cli("runs", "compare", "a", "b", "--root", str(root), "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "status", "mode", "reward"]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    key = stored_run.reward_key
    for name, checkpoint in (("a", 2), ("b", 1)):
        info = run_info(load_run(name, str(root)))
        row = rows[name]
        assert row[1:5] == ["complete", stored_run.mode, key, "2"]
        assert row[5] == f"{info.last.reward_final:.4f}"  # type: ignore[union-attr]
        eval_name = f"iter={checkpoint:04d}.steps={EVAL_STEPS}"
        metrics = read_manifest(str(root / name / "eval" / eval_name / key)).metrics
        assert row[6:8] == [eval_name, f"{metrics['score']:.4f}"]
        assert row[9] == str(sum(r.model_evals for r in info.iterations))
        assert row[12] == str(sum(r.kept or 0 for r in info.iterations))
    for png in ("compare_rewards.png", "compare_turning_points.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 1000
    page = (out / "index.html").read_text()
    assert "runs a, b" in page and page.count("data:image/png;base64,") == 2
    assert f"html: {out / 'index.html'}" in result.stdout


def test_compare_refuses_bad_arguments(stored_run: StoredRun, tmp_path: Path) -> None:
    root = str(two_runs(stored_run, tmp_path))
    out = str(tmp_path / "cmp")
    assert_user_error(run_cli("runs", "compare", "a", "--root", root, "--out", out), "two or more run ids")
    assert_user_error(run_cli("runs", "compare", "a", "a", "--root", root, "--out", out), "repeat")
    assert_user_error(
        run_cli("runs", "compare", "a", "nope", "--root", root, "--out", out), "unknown run 'nope'"
    )
    assert not Path(out).exists()  # nothing written before every run was found
