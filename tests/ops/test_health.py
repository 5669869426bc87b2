"""Learning health (`tpgrpo audit health`, the report's section): per-step gradient shares and prompt
groups without reward spread, with crafted data for each warning and a healthy case; and a run whose
`updates` were written with schema v1 (before per-step diagnostics) still reads, resumes, verifies
and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tpgrpo.schemas as schemas
from tpgrpo.report.health import (
    GRADIENT_SHARE_LIMIT,
    ZERO_STD_LIMIT,
    gradient_shares,
    health_warnings,
    iteration_health,
)
from tpgrpo.schemas import READABLE, SchemaRef, schema_for
from tpgrpo.schemas.updates import BY_STEP
from tpgrpo.storage import read_manifest, read_table, write_dataset
from tpgrpo.storage.state import clear_dataset

from .conftest import StoredRun, run_cli


def _updates(norms: list[list[float]]) -> pa.Table:
    """`updates` rows with the given per-step gradient norms (other columns plausible)."""
    n, w = len(norms), len(norms[0])
    rows = {
        "iteration": [0] * n,
        "optimizer_step": list(range(1, n + 1)),
        "epoch": [0] * n,
        "samples": [8 * w] * n,
        **{m: [0.1] * n for m in ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean")},
        "grad_norm": [float(np.linalg.norm(x)) for x in norms],
        "lr": [1e-3] * n,
        "grad_norm_by_step": norms,
        "clip_frac_by_step": [[0.0] * w] * n,
        "adv_abs_by_step": [[0.8] * w] * n,
        "adv_nonzero_by_step": [[1.0] * w] * n,
    }
    return pa.Table.from_pydict(rows, schema=schema_for("updates"))


def _annotations(step_reward: np.ndarray, group: np.ndarray) -> pa.Table:
    n, w = step_reward.shape
    return pa.table(
        {
            "trajectory_id": np.repeat(np.arange(n), w),
            "group_id": np.repeat(group, w),
            "step": np.tile(np.arange(w), n),
            "step_reward": step_reward.reshape(-1),
        }
    )


GROUPS = np.repeat(np.arange(4), 3)  # 4 prompt groups × G = 3
VARIED = np.arange(12 * 3, dtype=float).reshape(12, 3) % 7  # every group has spread at every step


def test_gradient_shares() -> None:
    # the base-model norms at j = 0, 7, 8 (window 9, cps exact log-prob): .019, .43, 13.3;
    # squares .000361, .1849, 176.89: step 8 holds 176.89 / 177.075 = 99.9 %
    shares = gradient_shares([0.019, 0.43, 13.3])
    assert shares is not None
    assert shares[2] == pytest.approx(0.99895, abs=1e-5) and sum(shares) == pytest.approx(1.0)
    assert gradient_shares([0.0, 0.0]) is None


def test_healthy_run_has_no_warning() -> None:
    # shares .3²/.5, .4²/.5 … : 0.18, 0.32, 0.5 — the largest exactly half, not more
    its = [
        iteration_health(_updates([[0.3, 0.4, 0.5]] * 2), _annotations(VARIED, GROUPS), i) for i in range(3)
    ]
    assert its[0].grad_share_by_step == pytest.approx([0.18, 0.32, 0.5])
    assert its[0].zero_std_groups == 0.0
    assert health_warnings(its) == []


def test_one_step_holding_the_gradient_warns() -> None:
    dominated = _updates([[0.019, 0.2, 13.3], [0.02, 0.3, 9.0]])
    its = [iteration_health(dominated, _annotations(VARIED, GROUPS), i) for i in (0, 1)]
    (warning,) = health_warnings(its)
    assert warning.startswith("trained step 2 holds 100% of the squared gradient")
    assert "over 4 optimizer steps (more than half in 4; iterations 0–1)" in warning
    assert "SPEC §2" in warning and "window_size: null" in warning  # the fix
    assert its[0].grad_share_by_step is not None and its[0].grad_share_by_step[2] > GRADIENT_SHARE_LIMIT


def test_groups_without_reward_spread_warn() -> None:
    flat = VARIED.copy()
    flat[:9] = 0.25  # groups 0, 1, 2 score the same for every sample and step: 3 of 4 groups
    its = [iteration_health(_updates([[0.3, 0.4, 0.5]]), _annotations(flat, GROUPS), i) for i in (0, 1)]
    assert its[0].zero_std_groups == 0.75 > ZERO_STD_LIMIT
    (warning,) = health_warnings(its)
    assert warning.startswith("75% of prompt groups had all-equal rewards")
    assert "iterations 0–1" in warning and "rollout.group_size" in warning
    # exactly half is not more than half
    flat[6:9] = VARIED[6:9]
    assert health_warnings([iteration_health(None, _annotations(flat, GROUPS), 0)]) == []


def _rewrite(uri: str, name: str, table: pa.Table, schema: pa.Schema | None = None) -> None:
    """Replace a finished dataset's rows, keeping its inputs and config hash (so its lineage holds);
    `schema`: write as that (older) schema, as an older tpgrpo did."""
    manifest = read_manifest(uri)
    clear_dataset(uri)
    saved = schemas.SCHEMAS[name]
    if schema is not None:
        schemas.SCHEMAS[name] = schema
    try:
        write_dataset(
            uri,
            name,
            table,
            inputs=manifest.inputs,
            config_hash=manifest.config_hash,
            metrics=manifest.metrics,
        )
    finally:
        schemas.SCHEMAS[name] = saved


def _set_norms(run: StoredRun, norms: list[float]) -> None:
    for i in (0, 1):
        uri = run.layout.updates(i)
        table = read_table(uri, "updates")
        column = pa.array([norms] * table.num_rows, type=pa.list_(pa.float64()))
        _rewrite(
            uri,
            "updates",
            table.set_column(table.schema.get_field_index("grad_norm_by_step"), "grad_norm_by_step", column),
        )


def _set_step_rewards(run: StoredRun, equal_groups: bool) -> None:
    for i in (0, 1):
        uri = run.layout.annotations(i, run.reward_key, run.mode)
        table = read_table(uri, "annotations")
        tid = table.column("trajectory_id").to_numpy()
        step = table.column("step").to_numpy()
        group = table.column("group_id").to_numpy()
        reward = group * 0.1 if equal_groups else tid * 0.1 + step  # equal within a group, or spread
        index = table.schema.get_field_index("step_reward")
        _rewrite(uri, "annotations", table.set_column(index, "step_reward", pa.array(reward.astype(float))))


def test_cli_warns_on_crafted_runs(run_copy: StoredRun) -> None:
    w = len(read_table(run_copy.layout.updates(0), "updates").column("grad_norm_by_step")[0].as_py())
    assert w == 3  # the stored run's window (T = 5)
    _set_norms(run_copy, [0.01, 0.02, 5.0])
    _set_step_rewards(run_copy, equal_groups=True)
    result = run_cli("audit", "health", *run_copy.args())
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert len(warnings) == 2, result.stdout
    assert warnings[0].startswith("WARN   trained step 2 holds 100% of the squared gradient")
    assert warnings[1].startswith("WARN   100% of prompt groups had all-equal rewards")
    # the table: iteration, optimizer steps, zero-std share, top step and its share, shares by step
    assert "   0    2      1.00   2: 1.00  0.00 0.00 1.00" in result.stdout
    strict = run_cli("audit", "health", *run_copy.args("--strict"))
    assert strict.exit_code == 1 and "WARN" in strict.stdout


def test_cli_healthy_run(run_copy: StoredRun) -> None:
    _set_norms(run_copy, [0.3, 0.4, 0.5])
    _set_step_rewards(run_copy, equal_groups=False)
    result = run_cli("audit", "health", *run_copy.args("--strict"))
    assert result.exit_code == 0, result.output
    assert "WARN" not in result.stdout
    assert result.stdout.strip().endswith(f"run {run_copy.run_id}: no warnings (2 iteration(s) checked)")
    assert "   1    2      0.00   2: 0.50  0.18 0.32 0.50" in result.stdout


def test_run_with_v1_updates_reads_resumes_verifies_and_reports(run_copy: StoredRun, tmp_path: Path) -> None:
    """The stored run as a tpgrpo before schema v2 left it: its `updates` in v1 (no per-step columns)."""
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.pipeline.steps import prepare_update

    for i in (0, 1):
        uri = run_copy.layout.updates(i)
        table = read_table(uri, "updates").drop_columns(list(BY_STEP))
        _rewrite(uri, "updates", table, schema=READABLE["updates"][1])
        assert read_manifest(uri).schema == SchemaRef("updates", 1)
    # reads: the new columns null
    rows = read_table(run_copy.layout.updates(1), "updates").to_pylist()
    assert rows and all(r["grad_norm_by_step"] is None for r in rows)
    # verifies
    result = run_cli("audit", "verify", *run_copy.args())
    assert result.exit_code == 0, result.output
    # resumes: the finished update of each iteration is skipped, not redone nor refused as stale
    ctx = load_run(run_copy.run_id, str(run_copy.root))
    assert all(prepare_update(ctx, i).done is not None for i in (0, 1))
    # health: a note instead of gradient shares; runs show and the report work
    result = run_cli("audit", "health", *run_copy.args())
    assert result.exit_code == 0, result.output
    assert "note: iterations 0–1: updates written before per-step diagnostics (schema v1)" in result.stdout
    assert "trained step" not in result.stdout  # no gradient warning without gradient data
    assert run_cli("runs", "show", run_copy.run_id, "--root", str(run_copy.root)).exit_code == 0
    out = tmp_path / "report"
    result = run_cli("report", *run_copy.args("--out", str(out)))
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<h2>Learning health</h2>" in page and "schema v1" in page


@pytest.mark.integration
def test_resume_trains_on_after_v1_updates(run_copy: StoredRun) -> None:
    """A v1 run resumed for one more iteration: iterations 0–1 are skipped, iteration 2 writes v2 rows."""
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import load_run

    for i in (0, 1):
        uri = run_copy.layout.updates(i)
        table = read_table(uri, "updates").drop_columns(list(BY_STEP))
        _rewrite(uri, "updates", table, schema=READABLE["updates"][1])
    ctx = load_run(run_copy.run_id, str(run_copy.root))
    before = {i: read_manifest(run_copy.layout.updates(i)).hash for i in (0, 1)}
    train(ctx.cfg, run_id=run_copy.run_id, iterations=3, root=str(run_copy.root))
    assert {i: read_manifest(run_copy.layout.updates(i)).hash for i in (0, 1)} == before
    new = read_manifest(run_copy.layout.updates(2))
    assert new.schema == SchemaRef("updates", 2)
    assert all(
        len(r["grad_norm_by_step"]) == 3
        for r in read_table(run_copy.layout.updates(2), "updates").to_pylist()
    )
