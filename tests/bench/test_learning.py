"""bench/learning.py: the order in which it submits work, on a fresh `--root`.

The base evaluation reads checkpoint 0 of the first job's run; it used to be submitted before any
run existed and failed with "unknown run" at the very end of a benchmark. `submit_jobs` creates that
run first. Here the training and the evaluation are stand-ins that record what they found (a real
benchmark runs for hours); creating the run is real (`init_run` on the embedded tiny model).
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tpgrpo.errors import UserError
from tpgrpo.pipeline.context import load_run
from tpgrpo.storage.blobs import blob_state

LEARNING = Path(__file__).resolve().parents[2] / "bench" / "learning.py"


def _learning() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_learning", LEARNING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_evaluation_finds_its_run_on_a_fresh_root(tmp_path: Path, monkeypatch: Any) -> None:
    learning = _learning()
    root = tmp_path / "bench-root"
    seen: list[tuple[str, str, str]] = []

    def evaluate(root_: Path, run_id: str, checkpoint: int, replicates: int, steps: int) -> dict[str, Any]:
        ctx = load_run(run_id, str(root_))  # UserError "unknown run" when it does not exist yet
        seen.append(("evaluate", run_id, blob_state(ctx.layout.checkpoint(checkpoint))))
        return {"checkpoint": checkpoint}

    def train(root_: Path, config: str, seed: int, *rest: Any) -> dict[str, Any]:
        seen.append(("train", f"{config}-s{seed}", ""))
        return {"run_id": f"{config}-s{seed}"}

    # the stand-in evaluation fails like the real one on a root without the run
    with pytest.raises(UserError, match="flow_grpo-s0"):
        evaluate(root, "flow_grpo-s0", 0, 1, 2)
    monkeypatch.setattr(learning, "evaluate_run", evaluate)
    monkeypatch.setattr(learning, "train_and_evaluate", train)
    jobs = [("flow_grpo", 0), ("tp", 0)]
    with ThreadPoolExecutor(1) as pool:  # one worker: submitted work runs in submission order
        base, runs = learning.submit_jobs(pool, root, jobs, 1.0, [], 1, 2)
        assert base.result() == {"checkpoint": 0}
        assert [r.result()["run_id"] for r in runs] == ["flow_grpo-s0", "tp-s0"]
    # the base evaluation ran first and found the first job's run with its checkpoint 0 finished
    assert seen == [
        ("evaluate", "flow_grpo-s0", "done"),
        ("train", "flow_grpo-s0", ""),
        ("train", "tp-s0", ""),
    ]
    # the run it created is the one training resumes (same config: creating it again is a no-op)
    assert learning.create_run(root, "flow_grpo", 0, []).layout.run_id == "flow_grpo-s0"


def test_dance_configuration_is_configs_dance_tiny() -> None:
    """The benchmark's `dance` configuration trains what configs/dance_tiny.yaml describes (on the
    benchmark's common settings), and the benchmark compares it with Flow-GRPO's terminal reward."""
    from tpgrpo.config import load_config

    learning = _learning()
    configs = Path(__file__).resolve().parents[2] / "configs"
    ours = load_config(configs / "tiny.yaml", learning.CONFIGS["dance"])
    theirs = load_config(configs / "dance_tiny.yaml")
    assert ours.model_copy(update={"name": theirs.name}) == theirs
    assert learning.config_mode("dance") == "flow_grpo" and learning.flow_reference("dance") == "flow_grpo"
