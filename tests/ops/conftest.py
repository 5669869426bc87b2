"""Fixtures for the operations surface: one real stored run, built once, and a CLI runner.

`stored_run` trains 2 iterations (2 prompts × G=4, T=5, window W=3) with the real `train` flow on the tiny
model and evaluates every checkpoint with the real `evaluate` flow (4 ODE steps, one prompt per
task), in this process, into a session temp root. Tests that mutate a run take `run_copy`.

The model is the embedded checkpoint (`embedded:tiny`, rewarded with `shapes`) once
`tpgrpo/world/checkpoint/model_index.json` exists; until then a randomly initialised tiny
pipeline of the same architecture, rewarded with `jpeg` (whose scores vary on random images,
while `shapes` gives 0 there).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

EVAL_STEPS = 4
RUN_ID = "opsrun"


@dataclass(frozen=True)
class StoredRun:
    """A stored run on local disk.

    Args:
        root (`Path | str`): the runs root (a local path, or an `s3://` URI for read-only use).
        run_id (`str`): the run's id.
        reward_key (`str`): the key of the run's reward.
        mode (`str`): the run's reward mode.
    """

    root: Path | str
    run_id: str
    reward_key: str
    mode: str = "tp_constrained"

    @property
    def dir(self) -> Path:
        """The run's local directory."""
        return Path(self.root) / self.run_id

    @property
    def layout(self) -> Any:
        from tpgrpo.storage import RunLayout

        return RunLayout(str(self.root), self.run_id)

    def args(self, *extra: str) -> list[str]:
        """`--run ID --root ROOT` plus `extra` (for commands taking --run)."""
        return ["--run", self.run_id, "--root", str(self.root), *extra]


def embedded_available() -> bool:
    from tpgrpo.models.factory import embedded_checkpoint_dir

    return (embedded_checkpoint_dir() / "model_index.json").is_file()


@pytest.fixture(scope="session")
def ops_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A private PREFECT_HOME, no analytics, a patient server start; torch on one thread.

    One thread: on the shared 2-core test machine two torch threads fighting a pretraining job for
    the cores made sampling ~20x slower than one.
    """
    import torch

    env = {
        "PREFECT_HOME": str(tmp_path_factory.mktemp("ops-prefect")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    old_threads = torch.get_num_threads()
    os.environ.update(env)
    torch.set_num_threads(1)
    yield env
    torch.set_num_threads(old_threads)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ops_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(model.path, reward spec): the embedded checkpoint with `shapes`, else a random tiny one
    with `jpeg`."""
    if embedded_available():
        return "embedded:tiny", "shapes"
    from tpgrpo.world.prompts import VOCABULARY
    from tpgrpo.world.tiny import build_tiny_pipeline

    path = tmp_path_factory.mktemp("ops-model") / "tiny"
    build_tiny_pipeline(VOCABULARY, seed=1).save_pretrained(path)
    return str(path), "jpeg"


@pytest.fixture(scope="session")
def stored_run(
    ops_env: dict[str, str], ops_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> StoredRun:
    """Two trained iterations and an evaluation of checkpoints 0, 1, 2 (real flows, this process)."""
    from tpgrpo.config import load_config_data
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import RunContext

    model, reward = ops_model
    root = tmp_path_factory.mktemp("ops-runs") / "runs"
    cfg = load_config_data(
        {
            "name": RUN_ID,
            "seed": 5,
            "iterations": 2,
            "model": {"path": model},
            # T = 5: the shift-3 grid 1, .90, .75, .50, .0089, 0 gives SPEC §2's window W = 3 (step 3,
            # σ' = .0089, has cps std .008), three trained steps for the turning-point audits
            "sampling": {"num_steps": 5},
            "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 1, "group_size": 4},
            "branch": {"chunk_size": 16},
            "reward": {"spec": reward, "mode": "tp_constrained"},
            "update": {"optimizer_steps": 2, "micro_batch": 16, "lr": 1e-3, "ema_every": 1},
            "storage": {"root": str(root)},
        }
    )
    assert train(cfg, run_id=RUN_ID)["iterations"] == 2
    ctx = RunContext.create(cfg, RUN_ID, str(root))
    run_evaluation(ctx, checkpoint="all", steps=EVAL_STEPS, per_task=1)
    return StoredRun(root, RUN_ID, ctx.reward_key())


@pytest.fixture
def run_copy(stored_run: StoredRun, tmp_path: Path) -> StoredRun:
    """A private copy of the stored run, for tests that change it."""
    root = tmp_path / "runs"
    shutil.copytree(stored_run.dir, root / stored_run.run_id)
    return StoredRun(root, stored_run.run_id, stored_run.reward_key, stored_run.mode)


class _Main:
    """`tpgrpo.cli.app.main` as a click-style command, so `CliRunner` runs the real entry point
    (with its error handling: exit 2 for user mistakes, 1 for data faults, one message, no traceback)."""

    name = "tpgrpo"

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> None:
        from tpgrpo.cli.app import main

        saved = sys.argv
        sys.argv = [prog_name or "tpgrpo", *(args or [])]
        try:
            main()
        finally:
            sys.argv = saved


def run_cli(*args: str) -> Result:
    """Run `tpgrpo ARGS` through `CliRunner`; `result.stdout` / `result.stderr` are separate."""
    return CliRunner().invoke(_Main(), list(args), catch_exceptions=True)  # type: ignore[arg-type]


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit code 2, one `error: …` message on stderr naming every fragment, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.stderr.strip()
    assert message.startswith("error: "), message
    assert "Traceback" not in result.output and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def file_digests(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `directory` whose path has none of `skip`."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_file() and not any(s in rel for s in skip):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
