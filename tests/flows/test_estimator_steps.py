"""`branch.estimator` through the run's steps (issue 18): the branches manifest records it, a
rerun skips the finished output, `runs show` prints it, and the iteration scores and annotates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tpgrpo.cli.app import app
from tpgrpo.config import load_config_data

from .conftest import small_config

RUN = "est"


@pytest.mark.parametrize("estimator", ["x0", "prefix:2"])
def test_branch_step_records_the_estimator_and_resumes(
    flow_pipeline: Path, tmp_path: Path, estimator: str
) -> None:
    from tpgrpo.pipeline import steps
    from tpgrpo.storage import read_manifest, read_table

    root = tmp_path / "runs"
    cfg = load_config_data(
        small_config(flow_pipeline, root, **{"iterations": 1, "sampling.num_steps": 6}),
        [f"branch.estimator={estimator}"],
    )
    ctx = steps.RunContext.create(cfg, RUN)
    steps.init_run(ctx)
    steps.sharded_step(ctx, "rollout", 0)
    first = steps.sharded_step(ctx, "branch", 0)
    assert first.metrics["estimator"] == estimator
    manifest = read_manifest(ctx.layout.branches(0))
    assert manifest.metrics["estimator"] == estimator and manifest.hash == first.hash
    logged: list[str] = []
    again = steps.sharded_step(ctx, "branch", 0, log=logged.append)  # resume: nothing recomputed
    assert again.hash == first.hash and any("done, skipped" in line for line in logged)
    window = read_table(ctx.layout.rollouts(0), "rollouts", columns=["window_size"])
    w = int(window.column("window_size")[0].as_py())
    rows = read_table(ctx.layout.branches(0), "branches", columns=["boundary", "model_evals"])
    assert rows.num_rows == window.num_rows * (w + 1)
    if estimator == "x0":
        assert manifest.model_evals == 0
    steps.sharded_step(ctx, "score", 0)
    annotated = steps.annotate_step(ctx, 0)
    assert annotated.rows == window.num_rows * w

    out = CliRunner().invoke(app, ["runs", "show", RUN, "--root", str(root)])
    assert out.exit_code == 0, out.output
    assert f"branch     estimator {estimator}, completions True" in out.output
    shown = CliRunner().invoke(app, ["runs", "show", RUN, "--root", str(root), "--json"])
    assert json.loads(shown.output)["branch_estimators"] == {"0": estimator}
