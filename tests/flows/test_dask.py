"""The train flow on a Dask cluster: 2 shards on a local 2-worker cluster (processes) give exactly
the datasets and checkpoints of the single-process threads run with one shard, same seed.

Bit-equality holds by construction: a trajectory's noise comes from its own seed, each prompt is
encoded on its own (`stages.common.encode_prompts`), and the config keeps every batched call
within one prompt group (`branch.chunk_size` = `group_size`, `model.eval_batch` = one group's
branch images), so no model call mixes work of two shards. The Dask workers are other processes:
they unpickle the shard tasks' `RunContext` and load their own policy once each.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from tpgrpo.config import Config, load_config_data
from tpgrpo.storage import RunLayout

from .conftest import one_torch_thread, small_config
from .test_train import _content

GROUP = 3  # small_config's group_size


def _config(pipeline: Path, root: Path, **extra: Any) -> Config:
    """Two iterations; chunks of one prompt group (3 trajectories, 3 × 4 branch images)."""
    aligned = {"branch.chunk_size": GROUP, "model.eval_batch": GROUP * 4}
    return load_config_data(small_config(pipeline, root, **{**aligned, **extra}))


def test_shard_task_arguments_pickle(flow_pipeline: Path, tmp_path: Path) -> None:
    """What a Dask worker receives: the RunContext (pydantic Config inside) and the Plan."""
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.pipeline.steps import Plan

    ctx = RunContext.create(_config(flow_pipeline, tmp_path / "runs", **{"rollout.shards": 2}), "r")
    p = Plan("rollout", 0, ctx.layout.rollouts(0), "rollouts", {"prompts": "h"}, "c")
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back_ctx, back_plan = pickle.loads(dumps((ctx, p)))
        assert back_ctx.cfg == ctx.cfg and back_ctx.cfg.hash() == ctx.cfg.hash()
        assert back_ctx.layout == ctx.layout and back_ctx.storage_options == ctx.storage_options
        assert back_plan == p


@pytest.mark.integration
def test_dask_two_shards_equal_single_process(
    flow_pipeline: Path, prefect_env: dict[str, str], tmp_path: Path
) -> None:
    from tpgrpo.flows.train import train

    ref_root, dask_root = tmp_path / "threads", tmp_path / "dask"
    with one_torch_thread():  # as the Dask workers (OMP_NUM_THREADS=1)
        train(_config(flow_pipeline, ref_root), run_id="r")
    dask_cfg = _config(
        flow_pipeline,
        dask_root,
        **{"rollout.shards": 2, "flow.task_runner": "dask", "flow.workers": 2},
    )
    with one_torch_thread():
        result = train(dask_cfg, run_id="r")
    assert result["iterations"] == 2
    layout = RunLayout(str(dask_root), "r")
    # both shards wrote their part files (shard 0 and shard 1 of every sharded stage)
    for uri in (layout.rollouts(1), layout.branches(1), layout.rewards(1, "jpeg_incompressibility")):
        parts = sorted(p.name for p in Path(uri).glob("part-*.parquet"))
        assert {int(name.split("-")[1]) for name in parts} == {0, 1}, parts
    assert _content(layout) == _content(RunLayout(str(ref_root), "r"))
