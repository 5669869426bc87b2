"""`branch.audit_every`: a Flow-GRPO run without completions completes every K-th iteration anyway, so
TP-GRPO's annotations can be read on it (`tpgrpo annotate --mode tp`), and it trains exactly as the
run without audits does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from typer.testing import CliRunner

from tpgrpo.cli.app import app
from tpgrpo.config import load_config_data
from tpgrpo.errors import ConfigError, DataError
from tpgrpo.pipeline.context import RunContext
from tpgrpo.storage import read_table
from tpgrpo.storage.blobs import read_blobs

from .conftest import one_torch_thread, small_config

pytestmark = pytest.mark.integration

FLOW = {"branch.completions": False, "reward.mode": "flow_grpo", "update.kl_beta": 0.0}


def _train(pipeline: Path, root: Path, run_id: str, **extra: object) -> RunContext:
    from tpgrpo.pipeline import steps

    cfg = load_config_data(small_config(pipeline, root, **FLOW, **extra))
    ctx = steps.RunContext.create(cfg, run_id)
    with one_torch_thread():
        steps.init_run(ctx)
        for i in range(cfg.iterations):
            for stage in steps.STAGES:
                steps.run_stage(ctx, stage, i)
    return ctx


def _adapter(ctx: RunContext, iteration: int) -> dict[str, torch.Tensor]:
    files = read_blobs(ctx.layout.checkpoint(iteration))[1]
    return {
        name: t
        for f, data in sorted(files.items())
        if f.endswith(".safetensors")
        for name, t in load_safetensors(data).items()
    }


def test_audited_iterations_have_completions_and_train_the_same(
    flow_pipeline: Path, prefect_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    plain = _train(flow_pipeline, root, "plain")
    audited = _train(flow_pipeline, root, "audited", **{"branch.audit_every": 2})
    layout, key = audited.layout, audited.reward_key()
    n = audited.cfg.rollout.trajectories

    # iteration 0 scored final images only; iteration 1 (the 2nd) every window boundary
    b0 = read_table(layout.branches(0), "branches")
    b1 = read_table(layout.branches(1), "branches")
    w = int(read_table(layout.rollouts(1), "rollouts").column("window_size")[0].as_py())
    assert b0.num_rows == n and set(b0.column("boundary").to_pylist()) == {w}
    assert b1.num_rows == n * (w + 1) and set(b1.column("boundary").to_pylist()) == set(range(w + 1))
    assert read_table(layout.rewards(1, key), "rewards").num_rows == n * (w + 1)

    # the audit changes nothing the update reads: the adapters of every checkpoint are equal
    for i in (1, 2):
        a, b = _adapter(plain, i), _adapter(audited, i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # TP-GRPO's annotations on the audited iteration; the others are left out and said so
    runner = CliRunner()
    args = ["annotate", "--run", "audited", "--reward", key, "--root", str(root)]
    out = runner.invoke(app, [*args, "--mode", "tp_constrained"])
    assert out.exit_code == 0, out.output
    assert "left out iteration(s) 0, scored on final images only" in out.output
    assert layout.annotations(1, key, "tp_constrained")
    ann = read_table(layout.annotations(1, key, "tp_constrained"), "annotations")
    assert ann.num_rows == n * w
    rows = [line.split() for line in out.output.splitlines() if line.split()[:2] == ["1", "tp_constrained"]]
    assert len(rows) == 1

    # the report shows TP-GRPO's view of the audited iteration: its stats, plot and example strips
    from tpgrpo.report.build import build_report

    files = build_report(audited, tmp_path / "report")
    page = files.html.read_text()
    assert "TP-GRPO on the audited iterations" in page and "iteration(s) 1 were completed anyway" in page
    assert "mode tp_constrained" in page and "iteration 1: " in page
    assert {p.name for p in files.images} >= {
        "turning_points_tp_constrained.png",
        "strips_iter=0001_tp_constrained.png",
    }
    plain_page = build_report(plain, tmp_path / "plain-report").html.read_text()
    assert "TP-GRPO on the audited iterations" not in plain_page

    # only final images selected: a clear error naming the audited iterations
    out = runner.invoke(app, [*args, "--mode", "tp", "--iters", "0"])
    assert isinstance(out.exception, DataError)
    assert "scored only final images" in str(out.exception)
    assert "audited: iterations 1, 3, … (branch.audit_every=2)" in str(out.exception)
    # a run never audited says how to audit one
    plain_args = ["annotate", "--run", "plain", "--reward", key, "--root", str(root), "--mode", "tp"]
    out = runner.invoke(app, plain_args)
    assert isinstance(out.exception, DataError) and "branch.audit_every=K" in str(out.exception)


def test_audit_every_needs_a_run_without_completions(flow_pipeline: Path, tmp_path: Path) -> None:
    data = small_config(flow_pipeline, tmp_path, **{"branch.audit_every": 3})  # tp_constrained
    with pytest.raises(ConfigError, match=re.escape("branch.audit_every=3 audits a run without completions")):
        load_config_data(data)
    audited = load_config_data(small_config(flow_pipeline, tmp_path, **FLOW, **{"branch.audit_every": 3}))
    assert [i for i in range(9) if audited.branch.completes(i)] == [2, 5, 8]
    assert all(load_config_data(data | {"branch": {}}).branch.completes(i) for i in range(3))


def test_final_only_iteration_refused_by_step_level_modes(flow_pipeline: Path, tmp_path: Path) -> None:
    """The annotate stage itself (not only the CLI) refuses a final-only iteration, naming the fix."""
    from tpgrpo.pipeline.annotate import annotate_step

    ctx = _train(flow_pipeline, tmp_path / "runs", "flow", iterations=1)
    with pytest.raises(DataError, match=re.escape("branch.audit_every=K completes every K-th iteration")):
        annotate_step(ctx, 0, key=ctx.reward_key(), mode="incremental")
