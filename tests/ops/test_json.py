"""`--json` on the inspection commands: one JSON document on stdout (the same facts as the text
form), messages and errors on stderr, the same exit codes; `tpgrpo --version`."""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import EVAL_STEPS, StoredRun, run_cli


def document(*args: str, code: int = 0) -> Any:
    result = run_cli(*args)
    assert result.exit_code == code, (result.exit_code, result.output)
    return json.loads(result.stdout)  # stdout holds the document and nothing else


def test_runs_list(stored_run: StoredRun) -> None:
    from tpgrpo.storage import read_manifest

    doc = document("runs", "list", "--root", str(stored_run.root), "--json")
    assert doc["root"] == str(stored_run.root)
    (run,) = doc["runs"]
    assert (run["run_id"], run["status"], run["iterations_done"], run["iterations"]) == (
        stored_run.run_id,
        "complete",
        2,
        2,
    )
    assert (run["reward_key"], run["mode"]) == (stored_run.reward_key, stored_run.mode)
    layout = stored_run.layout
    last_train = read_manifest(layout.annotations(1, stored_run.reward_key, stored_run.mode)).metrics
    last_eval = read_manifest(layout.eval(f"iter=0002.steps={EVAL_STEPS}", stored_run.reward_key)).metrics
    assert run["train_reward"] == last_train["reward_final_mean"]  # full precision, not the table's 4 digits
    assert run["eval_score"] == last_eval["score"]
    datetime.fromisoformat(run["created"])


def test_runs_list_of_an_empty_root_and_with_a_damaged_run(run_copy: StoredRun, tmp_path: Path) -> None:
    assert document("runs", "list", "--root", str(tmp_path), "--json") == {"root": str(tmp_path), "runs": []}
    root = Path(run_copy.root)
    shutil.copytree(run_copy.dir, root / "healthy")
    (run_copy.dir / "run.json").write_text('{"config": ')
    doc = document("runs", "list", "--root", str(root), "--json", code=1)  # listed, yet exit 1
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert runs["healthy"]["status"] == "complete"
    assert runs[run_copy.run_id]["status"] == "damaged" and "run.json" in runs[run_copy.run_id]["error"]


def test_runs_show(stored_run: StoredRun) -> None:
    doc = document("runs", "show", stored_run.run_id, "--root", str(stored_run.root), "--json")
    assert (doc["run_id"], doc["status"], doc["iterations_done"]) == (stored_run.run_id, "complete", 2)
    assert doc["config"]["reward"]["mode"] == stored_run.mode
    assert doc["config"]["rollout"]["group_size"] == 4 and doc["window"] == "[0, 3)"
    assert [r["iteration"] for r in doc["iterations"]] == [0, 1]
    assert all(r["reached"] == "checkpoint" and r["stages"] for r in doc["iterations"])
    assert sorted(e["name"] for e in doc["evals"]) == [f"iter={k:04d}.steps={EVAL_STEPS}" for k in range(3)]
    assert doc["rescored"] == {} and doc["code_version"]


def test_audit_verify_clean_and_faulty(stored_run: StoredRun, run_copy: StoredRun) -> None:
    doc = document("audit", "verify", *stored_run.args("--json"))
    assert doc["ok"] is True and doc["faults"] == [] and "run.json" in doc["checked"]
    part = run_copy.dir / "iter=0000/branches/part-00000-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    result = run_cli("audit", "verify", *run_copy.args("--json"))
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["faults"][0].startswith("iter=0000/branches: part part-00000-00000.parquet fails its SHA-256")
    assert result.stderr.startswith("error: ") and "2 fault(s)" in result.stderr
    assert "FAULT" not in result.stdout


def test_audit_turning_points_and_trajectory(stored_run: StoredRun) -> None:
    doc = document("audit", "turning-points", *stored_run.args("--json"))
    assert (doc["reward_key"], doc["mode"]) == (stored_run.reward_key, stored_run.mode)
    assert [s["iteration"] for s in doc["iterations"]] == [0, 1]
    assert all(len(s["rate_detected"]) == s["steps"] == 3 for s in doc["iterations"])
    traj = document("audit", "trajectory", *stored_run.args("--iter", "1", "--traj", "2", "--json"))
    assert (traj["iteration"], traj["trajectory_id"], traj["window_size"]) == (1, 2, 3)
    assert len(traj["rho"]) == 4 and len(traj["increment"]) == len(traj["advantage"]) == 3
    # the increments are the differences of the boundary rewards, as in the text form
    rho = traj["rho"]
    assert all(math.isclose(d, rho[j + 1] - rho[j], abs_tol=1e-6) for j, d in enumerate(traj["increment"]))


def test_evaluate_with_baseline(stored_run: StoredRun) -> None:
    """Cached evaluations of checkpoints 0 and 2 (the fixture made them): the per-task summaries and
    the paired gain, and nothing from Prefect on stdout."""
    args = stored_run.args("--checkpoint", "2", "--baseline", "0", "--steps", str(EVAL_STEPS))
    doc = document("evaluate", *args, "--prompts-per-task", "1", "--json")
    assert sorted(e["checkpoint"] for e in doc["evaluations"]) == [0, 2]
    by_k = {e["checkpoint"]: e for e in doc["evaluations"]}
    gains = {g["metric"]: g for g in doc["gains"]}
    assert set(gains) == {"score", "strict"} and all(g["checkpoint"] == 2 for g in doc["gains"])
    score = gains["score"]
    assert math.isclose(score["base"], by_k[0]["summary"]["score"], abs_tol=1e-9)
    assert math.isclose(score["value"], by_k[2]["summary"]["score"], abs_tol=1e-9)
    assert math.isclose(score["gain"], score["value"] - score["base"], abs_tol=1e-9)
    assert score["images"] == by_k[2]["rows"] and isinstance(score["excludes_zero"], bool)


def test_version() -> None:
    from tpgrpo import __version__

    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"tpgrpo {__version__}")


def test_plain_values() -> None:
    from tpgrpo.cli.jsonout import plain
    from tpgrpo.report.paired import PairedGain

    when = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    gain = PairedGain("score", 0.5, 0.6, 0.1, float("nan"), 6, 1)
    assert plain({"g": gain, "t": when, "x": np.float32(0.25), "a": np.arange(3), "p": Path("a/b")}) == {
        "g": {
            "metric": "score",
            "base": 0.5,
            "value": 0.6,
            "gain": 0.1,
            "half_width": None,  # NaN (one prompt) is null: JSON has no NaN
            "images": 6,
            "prompts": 1,
        },
        "t": "2026-12-05T12:00:00+00:00",
        "x": 0.25,
        "a": [0, 1, 2],
        "p": "a/b",
    }
