"""Runs stored before SPEC §2's near-deterministic floor keep working.

Before the rule, `window_size: null` meant `W = T − 1` and any explicit window that fit the grid was
taken. Such runs are reproduced here by training with that old rule patched in; then, with the
real code: they verify and report their stored window; a null-window run resumes with the floor
window for its new iterations; an explicit window under the floor still reads, but is not trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tpgrpo.algorithm import Window
from tpgrpo.config import load_config_data
from tpgrpo.errors import ConfigError
from tpgrpo.flows.train import train
from tpgrpo.pipeline.catalog import format_windows, run_windows
from tpgrpo.pipeline.context import load_run
from tpgrpo.report.verify import verify_run

from .conftest import one_torch_thread, small_config

pytestmark = pytest.mark.integration


def _train_with_the_old_rule(monkeypatch: Any, cfg: Any, run_id: str) -> None:
    import tpgrpo.pipeline.start
    import tpgrpo.stages.common

    def old_rule(cfg: Any, sigmas: Any) -> Window:
        s = cfg.sampling
        return Window(s.window_start, s.window_size if s.window_size is not None else s.num_steps - 1)

    with monkeypatch.context() as patch:
        patch.setattr(tpgrpo.stages.common, "run_window", old_rule)
        patch.setattr(tpgrpo.pipeline.start, "window_check", lambda cfg: [])  # preflight and init_run
        with one_torch_thread():
            train(cfg, run_id=run_id, iterations=1)


def test_runs_from_before_the_floor_rule(
    flow_pipeline: Path, prefect_env: dict[str, str], tmp_path: Path, monkeypatch: Any
) -> None:
    root = tmp_path / "runs"
    # T = 4 on the shift-3 grid 1, .86, .60, .0089, 0: step 2 (σ' = .0089) has cps std .008, so the
    # floor window is W = 2, where the old rule took W = T − 1 = 3
    null = load_config_data(small_config(flow_pipeline, root, iterations=2))
    explicit = load_config_data(
        small_config(flow_pipeline, root, iterations=2, **{"sampling.window_size": 3})
    )
    _train_with_the_old_rule(monkeypatch, null, "old-null")
    _train_with_the_old_rule(monkeypatch, explicit, "old-explicit")

    for run_id in ("old-null", "old-explicit"):
        ctx = load_run(run_id, str(root))  # reading never applies the training rule
        assert run_windows(ctx) == {0: (0, 3)}
        assert format_windows(run_windows(ctx), ctx.cfg) == "[0, 3)"
        report = verify_run(ctx)
        assert report.ok, report.faults
        assert any("iter=0000/annotations" in c and "(36 rows)" in c for c in report.checked)  # 12 × W=3

    # resuming the null-window run: iteration 1 is sampled with the floor window
    with one_torch_thread():
        train(null, run_id="old-null", iterations=2)
    ctx = load_run("old-null", str(root))
    assert run_windows(ctx) == {0: (0, 3), 1: (0, 2)}
    assert format_windows(run_windows(ctx), ctx.cfg) == "[0, 3) in iteration 0; [0, 2) in iteration 1"
    report = verify_run(ctx)
    assert report.ok, report.faults
    assert any("iter=0001/annotations" in c and "(24 rows)" in c for c in report.checked)  # 12 × W=2

    # the explicit window under the floor: refused before anything is written
    with pytest.raises(ConfigError, match=r"step 2 \(σ 0\.6022 → 0\.0089, cps step std 0\.0080\)"):
        train(explicit, run_id="old-explicit", iterations=2)
    assert not (root / "old-explicit" / "iter=0001").exists()
