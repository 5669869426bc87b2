"""kill -9 the train flow anywhere, rerun: it completes, and equals the uninterrupted run.

Each chain runs `tpgrpo train CONFIG --run-id ref` (the reference run's id, in another root) as a
subprocess, SIGKILLs its process group at a kill point, starts it again (a resume), kills it again
at the next point, … and finally lets it finish. Then: exit code 0, `tpgrpo audit verify` passes
(schemas, checksums, row counts, lineage), every dataset row equals the reference run's (same
config and seed, never interrupted), every checkpoint file is byte-identical to its, and every
manifest records the same lineage hashes: nothing is duplicated, missing or different.

CI runs one chain of 2 kill points (branch of iteration 0, update of iteration 1); the
slow tier runs 4 chains of 5 random kill points (each stage once per chain, at a random iteration
and delay), 20 kills, and checks that all five stages were hit.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from ops.conftest import run_cli

from tpgrpo.storage import RunLayout

from .chaos import STAGES, KillPoint, Outcome, debris, run_chain
from .conftest import ITERATIONS, PrefectServer, run_content, write_config

pytestmark = pytest.mark.integration

# seconds a stage typically runs on the tiny model (2 loaded cores): kill delays are drawn below them
STAGE_SECONDS = {"rollout": 0.6, "branch": 0.4, "score": 0.25, "annotate": 0.12, "update": 1.0}


def _report(outcomes: list[Outcome]) -> str:
    rows = [
        f"  {o.point}: killed={o.killed} rc={o.returncode} landed={o.landed} ({o.seconds:.0f} s)"
        for o in outcomes
    ]
    return "\n".join(rows) + "\n--- last output:\n" + outcomes[-1].output[-3000:]


def _check_chain(outcomes: list[Outcome], layout: RunLayout, reference: RunLayout, root: Path) -> None:
    *kills, last = outcomes
    report = _report(outcomes)
    assert all(o.killed and o.landed != "done" for o in kills), report
    assert last.returncode == 0 and last.landed == "done", report
    assert not debris(layout), (debris(layout), report)
    assert not Path(layout.lock()).exists(), report
    verify = run_cli("audit", "verify", "--run", layout.run_id, "--root", str(root))
    assert verify.exit_code == 0, (verify.output, report)
    assert run_content(layout) == run_content(reference)


def test_kill_at_two_points_then_resume(
    reference_run: RunLayout, flow_pipeline: Path, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    config = write_config(flow_pipeline, root, tmp_path / "chaos.yaml")
    layout = RunLayout(str(root), reference_run.run_id)  # the same id: rows, payloads and lineage compare
    # the update of the tiny run lasts a fraction of a second on a quiet machine: kill at its start
    points = [KillPoint(0, "branch", 0.1), KillPoint(1, "update", 0.0)]
    outcomes = run_chain(config, layout.run_id, layout, prefect_server.env, points, ITERATIONS)
    print(_report(outcomes))
    _check_chain(outcomes, layout, reference_run, root)


def _random_points(rng: random.Random) -> list[KillPoint]:
    """One kill per stage, each at a random iteration and delay, in the order the run meets them."""
    points = [
        KillPoint(rng.randrange(ITERATIONS), stage, rng.uniform(0.0, STAGE_SECONDS[stage]))
        for stage in STAGES
    ]
    return sorted(points, key=KillPoint.order)


@pytest.mark.slow
@pytest.mark.parametrize("chain", range(4))
def test_kill_at_random_points_then_resume(
    reference_run: RunLayout,
    flow_pipeline: Path,
    prefect_server: PrefectServer,
    tmp_path: Path,
    chain: int,
    landed: dict[str, int],
) -> None:
    seed = int(os.environ.get("TPGRPO_CHAOS_SEED", "20240917")) + chain
    rng = random.Random(seed)
    root = tmp_path / "runs"
    config = write_config(flow_pipeline, root, tmp_path / "chaos.yaml")
    layout = RunLayout(str(root), reference_run.run_id)
    outcomes = run_chain(config, layout.run_id, layout, prefect_server.env, _random_points(rng), ITERATIONS)
    print(f"chain {chain} (seed {seed}):\n{_report(outcomes)}")
    _check_chain(outcomes, layout, reference_run, root)
    for outcome in outcomes[:-1]:
        stage = outcome.landed.split(".")[-1]
        landed[stage] = landed.get(stage, 0) + 1


@pytest.fixture(scope="module")
def landed() -> dict[str, int]:
    """Where the slow chains' kills landed, by stage (checked by the last test of the module)."""
    return {}


@pytest.mark.slow
def test_random_kills_covered_every_stage(landed: dict[str, int]) -> None:
    if not landed:
        pytest.skip("the random chains did not run")
    assert sum(landed.values()) >= 20, landed
    assert set(STAGES) <= set(landed), landed
