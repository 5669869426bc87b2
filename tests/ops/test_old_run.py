"""A run stored by an older tpgrpo (commit 4d5d835, before `tpgrpo.pipeline`) still verifies,
reports and resumes: stored formats, paths and config hashes are a contract across releases.

The fixture `tests/fixtures/runs-4d5d835/old-run` is one iteration of the embedded tiny model
(1 prompt × G=2, T=4, LoRA rank 1, reward `{"name": "shapes"}`, `iterations: 2`, so resuming
trains iteration 1), written by `train` at 4d5d835; its README holds the script that rebuilds it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import embedded_available, file_digests, run_cli

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "runs-4d5d835"
RUN_ID = "old-run"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not embedded_available(), reason="the embedded tiny checkpoint is not built"),
]


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(FIXTURE / RUN_ID, root / RUN_ID)
    return root


def test_old_run_verifies_and_reports(old_root: Path, ops_env: dict[str, str], tmp_path: Path) -> None:
    before = file_digests(old_root)
    verified = run_cli("audit", "verify", "--run", RUN_ID, "--root", str(old_root))
    assert verified.exit_code == 0, verified.output
    shown = run_cli("runs", "show", RUN_ID, "--root", str(old_root))
    assert shown.exit_code == 0, shown.output
    assert "shapes" in shown.stdout
    out = tmp_path / "report"
    reported = run_cli("report", "--run", RUN_ID, "--root", str(old_root), "--out", str(out))
    assert reported.exit_code == 0, reported.output
    assert "html:" in reported.stdout
    assert file_digests(old_root) == before  # reading never writes into the run


def test_old_run_resumes_without_redoing_anything(old_root: Path, ops_env: dict[str, str]) -> None:
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import load_run
    from tpgrpo.pipeline.lineage import score_config_hash, score_config_hashes, stage_config_hash
    from tpgrpo.report.verify import verify_run
    from tpgrpo.storage import read_manifest, read_run_record
    from tpgrpo.storage.blobs import read_blob_manifest

    ctx = load_run(RUN_ID, str(old_root))
    record = read_run_record(ctx.layout)
    assert record is not None and record["config_hash"] == ctx.cfg.hash()
    # the config hashes this code computes are the ones the old code stored
    assert read_manifest(ctx.layout.rollouts(0)).config_hash == stage_config_hash(ctx.cfg, "rollout")
    assert read_manifest(ctx.layout.branches(0)).config_hash == stage_config_hash(ctx.cfg, "branch")
    # the scores were hashed with the spec as written (`{"name": "shapes"}`): still accepted
    rewards_hash = read_manifest(ctx.layout.rewards(0, "shapes")).config_hash
    assert rewards_hash in score_config_hashes({"name": "shapes"})
    assert rewards_hash != score_config_hash({"name": "shapes"})
    assert read_blob_manifest(ctx.layout.checkpoint(1)).config_hash == stage_config_hash(ctx.cfg, "update")

    before = file_digests(old_root / RUN_ID)
    assert train(ctx.cfg, run_id=RUN_ID, root=str(old_root))["iterations"] == 2
    after = file_digests(old_root / RUN_ID)
    for path, digest in before.items():  # iteration 0, checkpoints 0 and 1: skipped, not rewritten
        assert after.get(path) == digest, path
    assert read_blob_manifest(ctx.layout.checkpoint(2)).meta.get("iteration") == 2
    report = verify_run(load_run(RUN_ID, str(old_root)))
    assert report.ok, report.faults
