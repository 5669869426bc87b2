"""The data-parallel update: 2 gloo processes under torchrun equal the single-process update.

Equal up to float summation order, to these tolerances (the rest exact):

- adapter, EMA and optimizer tensors: `|a − b| ≤ 2e-5 + 1e-4·|b|` (lr 1e-3, four optimizer steps;
  measured |Δ| ≤ 4e-6 on weights up to 0.5);
- `updates` rows: loss, KL, ratio, grad-norm columns and the per-step gradient norms and clip
  fractions `≤ 1e-6 + 1e-4·|b|`; iteration, optimizer step, epoch, samples, lr and the per-step
  advantage statistics exact.

The differences come from per-rank micro-batches (another batch composition in the transformer's
kernels) and from the all-reduce adding the ranks' gradient sums in another order.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load

from tpgrpo.config import Config, load_config_data
from tpgrpo.errors import ConfigError
from tpgrpo.stages.update import DataParallel
from tpgrpo.storage import RunLayout, read_table
from tpgrpo.storage.blobs import read_blob_manifest, read_blobs

from .conftest import small_config

RUN = "ddp"
EXACT = ("iteration", "optimizer_step", "epoch", "samples", "lr")
CLOSE = ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm")


def test_share_splits_every_step_once() -> None:
    """Contiguous slices that cover the step's transitions exactly once, sizes within one."""
    for n in (0, 1, 5, 9, 36):
        for world in (1, 2, 3, 4):
            slices = [DataParallel(rank, world).share(n) for rank in range(world)]
            assert slices[0][0] == 0 and slices[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
            sizes = [hi - lo for lo, hi in slices]
            assert max(sizes) - min(sizes) <= 1
    assert DataParallel(0, 2).share(9) == (0, 5) and DataParallel(1, 2).share(9) == (5, 9)


def test_alone_is_the_identity() -> None:
    dp = DataParallel()
    t = torch.ones(3)
    assert dp.all_reduce_(t) is t and torch.equal(t, torch.ones(3))
    assert dp.broadcast({"a": 1}) == {"a": 1}


def test_ddp_procs_validated(flow_pipeline: Path, tmp_path: Path) -> None:
    data = small_config(flow_pipeline, tmp_path, **{"update.ddp_procs": 2, "model.device": "cuda:1"})
    with pytest.raises(ConfigError, match=r"needs model\.device 'cuda'"):
        load_config_data(data)
    with pytest.raises(ConfigError, match="ddp_procs"):
        load_config_data(small_config(flow_pipeline, tmp_path, **{"update.ddp_procs": 0}))


# --- integration: a stored iteration, updated alone and by 2 torchrun processes --------------------


def _config(pipeline: Path, root: Path, **extra: Any) -> Config:
    """One iteration; two epochs of two optimizer steps, each accumulated over micro-batches of 4
    transitions per rank (18 transitions a step: ranks of 9 = 4 + 4 + 1); EMA every step."""
    updates = {"update.epochs": 2, "update.micro_batch": 4, "update.ema_every": 1, "iterations": 1}
    return load_config_data(small_config(pipeline, root, **{**updates, **extra}))


@pytest.fixture(scope="module")
def stored(flow_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose iteration 0 is annotated (stages called directly, no Prefect)."""
    from tpgrpo.pipeline import steps

    root = tmp_path_factory.mktemp("ddp-stored") / "runs"
    ctx = steps.RunContext.create(_config(flow_pipeline, root), RUN)
    steps.init_run(ctx)
    for stage in ("rollout", "branch", "score"):
        steps.sharded_step(ctx, stage, 0)
    steps.annotate_step(ctx, 0)
    return root


@pytest.fixture(scope="module")
def single(stored: Path, flow_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> RunLayout:
    """The single-process update of the stored iteration (a copy of the run)."""
    from tpgrpo.pipeline import steps

    root = tmp_path_factory.mktemp("ddp-single") / "runs"
    shutil.copytree(stored, root)
    steps.update_step(steps.RunContext.create(_config(flow_pipeline, root), RUN), 0)
    return RunLayout(str(root), RUN)


def _tensors(layout: RunLayout) -> dict[str, dict[str, torch.Tensor]]:
    _, files = read_blobs(layout.checkpoint(1))
    return {name: load(blob) for name, blob in files.items() if name.endswith(".safetensors")}


def assert_same_update(got: RunLayout, want: RunLayout) -> None:
    """Checkpoint 1 and the `updates` rows of `got` equal `want`'s within the stated tolerances."""
    a, b = _tensors(got), _tensors(want)
    assert set(a) == set(b) == {"adapter.safetensors", "ema.safetensors", "optimizer.safetensors"}
    for name in a:
        assert set(a[name]) == set(b[name])
        for key in sorted(a[name]):
            torch.testing.assert_close(a[name][key], b[name][key], rtol=1e-4, atol=2e-5, msg=f"{name}:{key}")
    _, fa = read_blobs(got.checkpoint(1))
    _, fb = read_blobs(want.checkpoint(1))
    assert json.loads(fa["optimizer.json"]) == json.loads(fb["optimizer.json"])
    rows_a = read_table(got.updates(0), "updates").sort_by("optimizer_step").to_pylist()
    rows_b = read_table(want.updates(0), "updates").sort_by("optimizer_step").to_pylist()
    assert len(rows_a) == len(rows_b) == 4
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert {k: ra[k] for k in EXACT} == {k: rb[k] for k in EXACT}
        for k in CLOSE:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (k, ra, rb)
        # per trained step: the norms are of the step's gradient over all ranks (not per rank)
        assert ra["adv_abs_by_step"] == rb["adv_abs_by_step"]
        assert ra["adv_nonzero_by_step"] == rb["adv_nonzero_by_step"]
        for k in ("grad_norm_by_step", "clip_frac_by_step"):
            assert len(ra[k]) == len(rb[k]) > 1
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), (k, ra, rb)


@pytest.mark.integration
def test_torchrun_update_equals_single_process(
    stored: Path, single: RunLayout, tmp_path: Path, prefect_env: dict[str, str]
) -> None:
    """`torchrun --nproc_per_node 2 -m tpgrpo.flows.ddp_update` on a copy of the stored iteration."""
    from tpgrpo.flows.ddp_update import torchrun_command

    root = tmp_path / "runs"
    shutil.copytree(stored, root)
    done = subprocess.run(
        torchrun_command(RUN, 0, str(root), 2),
        env={**os.environ, **prefect_env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "data-parallel over 2 processes (gloo)" in output
    assert output.count("update it0: 4 optimizer steps") == 1  # rank 0 logs, rank 1 is quiet
    layout = RunLayout(str(root), RUN)
    assert_same_update(layout, single)
    # trained from the same stored inputs: the same lineage
    assert read_blob_manifest(layout.checkpoint(1)).inputs == read_blob_manifest(single.checkpoint(1)).inputs


@pytest.mark.integration
def test_train_flow_launches_torchrun(
    stored: Path,
    single: RunLayout,
    flow_pipeline: Path,
    tmp_path: Path,
    prefect_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`update.ddp_procs: 2` in the train flow: the same datasets as the stored run, the same update
    within tolerance, and a finished update is skipped without starting torchrun."""
    from tpgrpo.flows import ddp_update
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import RunContext

    root = tmp_path / "runs"
    cfg = _config(flow_pipeline, root, **{"update.ddp_procs": 2})
    train(cfg, run_id=RUN)
    layout, ref = RunLayout(str(root), RUN), RunLayout(str(stored), RUN)
    key, mode = "jpeg_incompressibility", "tp_constrained"
    for uri, ref_uri, schema in [
        (layout.rollouts(0), ref.rollouts(0), "rollouts"),
        (layout.annotations(0, key, mode), ref.annotations(0, key, mode), "annotations"),
    ]:
        got, want = read_table(uri, schema), read_table(ref_uri, schema)
        keys = [(k, "ascending") for k in ("trajectory_id", "step") if k in got.column_names]
        assert got.sort_by(keys).to_pylist() == want.sort_by(keys).to_pylist()
    assert_same_update(layout, single)

    def no_torchrun(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished update started torchrun")

    monkeypatch.setattr(ddp_update.subprocess, "Popen", no_torchrun)
    messages: list[str] = []
    manifest = ddp_update.launch(RunContext.create(cfg, RUN), 0, log=messages.append)
    assert messages == ["update it0: done, skipped"]
    assert manifest.hash == read_blob_manifest(layout.checkpoint(1)).hash
