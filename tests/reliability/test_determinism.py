"""Checkpoints are a deterministic function of their inputs, and lineage hashes their content.

Two uninterrupted runs of one config and seed (in one process, so the process's RNG history
differs between them) and a run resumed after a lost iteration store byte-identical checkpoint
files (adapter, EMA, optimizer, RNG and step state) and record identical lineage. So rebuilding a
lost iteration, or forcing a stage whose output comes out the same, leaves every later iteration
valid; a forced stage whose output differs says so and names the command that invalidates the
iterations built from the old one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from flows.conftest import small_config
from ops.conftest import run_cli

from tpgrpo.storage import RunLayout
from tpgrpo.storage.blobs import BLOB_MANIFEST

from .conftest import ITERATIONS, PrefectServer, use_server

pytestmark = pytest.mark.integration


def checkpoint_payloads(layout: RunLayout) -> dict[str, bytes]:
    """Every checkpoint file's bytes (not `_CHECKPOINT.json`, which carries its creation time)."""
    out = {}
    for k in range(ITERATIONS + 1):
        directory = Path(layout.checkpoint(k))
        for path in sorted(directory.iterdir()):
            if path.name != BLOB_MANIFEST:
                out[f"iter={k:04d}/{path.name}"] = path.read_bytes()
    return out


def lineage(layout: RunLayout) -> dict[str, Any]:
    """Every manifest's identity and inputs: `hash` and `inputs` of each dataset and checkpoint."""
    out = {}
    run = Path(layout.run_dir)
    for path in sorted(run.rglob("_MANIFEST.json")) + sorted(run.rglob(BLOB_MANIFEST)):
        if "/eval/" in str(path):
            continue
        data = json.loads(path.read_text())
        out[str(path.parent.relative_to(run))] = {"hash": data["hash"], "inputs": data["inputs"]}
    return out


def _train(flow_pipeline: Path, root: Path, run_id: str, server: PrefectServer) -> RunLayout:
    from tpgrpo.config import load_config_data
    from tpgrpo.flows.train import train

    cfg = load_config_data(small_config(flow_pipeline, root))
    with use_server(server):
        assert train(cfg, run_id=run_id)["iterations"] == ITERATIONS
    return RunLayout(str(root), run_id)


def _resume(layout: RunLayout, server: PrefectServer) -> None:
    """`tpgrpo train` of a stored run again (its config read back from run.json)."""
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import load_run

    ctx = load_run(layout.run_id, layout.root)
    with use_server(server):
        assert train(ctx.cfg, run_id=layout.run_id, root=layout.root)["iterations"] == ITERATIONS


@pytest.fixture
def run_copy(reference_run: RunLayout, tmp_path: Path) -> RunLayout:
    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    return RunLayout(str(root), reference_run.run_id)


def test_two_uninterrupted_runs_store_identical_checkpoints(
    reference_run: RunLayout, flow_pipeline: Path, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    twin = _train(flow_pipeline, tmp_path / "runs", reference_run.run_id, prefect_server)
    ours, theirs = checkpoint_payloads(twin), checkpoint_payloads(reference_run)
    assert sorted(ours) == sorted(theirs)
    differ = [name for name in ours if ours[name] != theirs[name]]
    assert differ == []
    assert lineage(twin) == lineage(reference_run)


def test_rebuilt_iteration_leaves_later_iterations_valid(
    run_copy: RunLayout, prefect_server: PrefectServer
) -> None:
    """`rm -rf iter=0000` and `train` again: the rebuilt iteration equals the lost one, so checkpoint 1
    (and everything iteration 1 built on it) stays valid and is not rebuilt."""
    before_payloads, before_lineage = checkpoint_payloads(run_copy), lineage(run_copy)
    later = Path(run_copy.rollouts(1)) / "_MANIFEST.json"
    later_bytes = later.read_bytes()
    shutil.rmtree(run_copy.iteration_dir(0))
    _resume(run_copy, prefect_server)
    assert checkpoint_payloads(run_copy) == before_payloads
    assert lineage(run_copy) == before_lineage
    assert later.read_bytes() == later_bytes  # iteration 1 was skipped as done, not redone
    verify = run_cli("audit", "verify", "--run", run_copy.run_id, "--root", run_copy.root)
    assert verify.exit_code == 0, verify.output


def test_forced_update_with_the_same_result_leaves_later_iterations_valid(
    run_copy: RunLayout, prefect_server: PrefectServer
) -> None:
    before = checkpoint_payloads(run_copy)
    with use_server(prefect_server):
        result = run_cli(
            "stage", "update", "--run", run_copy.run_id, "--iter", "0", "--force", "--root", run_copy.root
        )
    assert result.exit_code == 0, result.output
    assert "differs" not in result.output
    assert checkpoint_payloads(run_copy) == before
    verify = run_cli("audit", "verify", "--run", run_copy.run_id, "--root", run_copy.root)
    assert verify.exit_code == 0, verify.output


def test_forced_update_with_another_result_says_so(
    run_copy: RunLayout, prefect_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update that comes out different (here: its learning step perturbed) names the later
    iterations built from the old checkpoint and the command that invalidates them; that command
    then clears them, and `train` rebuilds a run that verifies."""
    import torch

    from tpgrpo.stages import update

    original = update.train_iteration

    def perturbed(policy: Any, *args: Any, **kwargs: Any) -> Any:
        rows = original(policy, *args, **kwargs)
        with torch.no_grad():
            for p in policy.transformer.parameters():
                if p.requires_grad:
                    p.add_(1e-3)
        return rows

    monkeypatch.setattr(update, "train_iteration", perturbed)
    with use_server(prefect_server):
        result = run_cli(
            "stage", "update", "--run", run_copy.run_id, "--iter", "0", "--force", "--root", run_copy.root
        )
    assert result.exit_code == 0, result.output
    assert "checkpoints/iter=0001 differs from the one it replaced" in result.output
    assert f"tpgrpo runs invalidate {run_copy.run_id} --from 1" in result.output
    verify = run_cli("audit", "verify", "--run", run_copy.run_id, "--root", run_copy.root)
    assert verify.exit_code == 1
    monkeypatch.setattr(update, "train_iteration", original)
    dry = run_cli("runs", "invalidate", run_copy.run_id, "--from", "1", "--root", run_copy.root)
    assert dry.exit_code == 0, dry.output
    assert "iter=0001" in dry.output and "--yes" in dry.output
    assert Path(run_copy.rollouts(1)).is_dir()  # a dry run removes nothing
    done = run_cli("runs", "invalidate", run_copy.run_id, "--from", "1", "--yes", "--root", run_copy.root)
    assert done.exit_code == 0, done.output
    assert not Path(run_copy.iteration_dir(1)).exists()
    assert not Path(run_copy.checkpoint(2)).exists()
    assert Path(run_copy.checkpoint(1)).is_dir()
    verify = run_cli("audit", "verify", "--run", run_copy.run_id, "--root", run_copy.root)
    assert verify.exit_code == 0, verify.output
