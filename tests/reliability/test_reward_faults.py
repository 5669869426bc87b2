"""Reward faults at the stage level: the score stage against a remote reward server that is down,
slow, failing, or answering garbage, NaN or the wrong count.

The client's own fault handling is tested in `tests/rewards/test_http.py`; here the `score` stage
of a stored run (a copy of the reference run) meets the faults: it retries with backoff, then
fails with a `RewardError` naming the server and the fault, and leaves no finished `rewards`
dataset. A non-finite score never reaches an advantage: a stored NaN stops the annotate stage.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from ops.conftest import run_cli

from tpgrpo.errors import DataError, RewardError
from tpgrpo.pipeline import steps
from tpgrpo.pipeline.context import load_run
from tpgrpo.storage import RunLayout, read_table, write_dataset
from tpgrpo.storage.manifest import MANIFEST_NAME

from .conftest import MODE, REWARD_KEY, PrefectServer, use_server

pytestmark = pytest.mark.integration

ROWS = 36  # 12 trajectories × (W + 1 = 3) boundaries (T = 4: SPEC §2 window W = 2)


@pytest.fixture
def run_copy(reference_run: RunLayout, tmp_path: Path) -> RunLayout:
    root = tmp_path / "runs"
    shutil.copytree(reference_run.run_dir, root / reference_run.run_id)
    return RunLayout(str(root), reference_run.run_id)


def _spec(url: str, **params: Any) -> dict[str, Any]:
    return {
        "name": "http",
        "url": url,
        "timeout": 1.0,
        "retries": 2,
        "backoff": 0.2,
        "batch_size": 16,
        **params,
    }


def _score(layout: RunLayout, spec: dict[str, Any]) -> Any:
    ctx = load_run(layout.run_id, layout.root)
    return steps.sharded_step(ctx, "score", 0, spec=spec)


def _finished(layout: RunLayout, key: str) -> bool:
    return (Path(layout.rewards(0, key)) / MANIFEST_NAME).exists()


def test_transient_server_faults_are_retried(run_copy: RunLayout, scripted: Any) -> None:
    server = scripted([503, "drop", 500])
    manifest = _score(run_copy, _spec(server.url, retries=3))
    assert manifest.rows == ROWS and _finished(run_copy, "http")
    assert sum(server.sizes) == ROWS + 3 * 16  # three failed requests of one batch each, resent


@pytest.mark.parametrize(
    ("steps_", "match", "min_seconds"),
    [
        (
            [500] * 9,
            r"HTTP 500: scripted failure 500 \(gave up after 3 attempts, backoff 0.2 s doubling\)",
            0.6,
        ),
        (["slow"] * 9, r"no answer within the timeout of 1 s \(gave up after 3 attempts", 3.0),
        (["this is { not json"], "malformed JSON", 0.0),
        (['{"scores": [SCORES], "key": "fake", "version": "7"}'], "finite", 0.0),
        ([{"scores": [0.5]}], "1 scores for 16 images", 0.0),
        ([{"scores": ["high"] * 16}], "number", 0.0),
    ],
    ids=["persistent 500", "slow", "garbage", "NaN", "wrong count", "wrong type"],
)
def test_broken_server_fails_the_stage(
    run_copy: RunLayout, scripted: Any, steps_: list[Any], match: str, min_seconds: float
) -> None:
    server = scripted(steps_)
    started = time.monotonic()
    with pytest.raises(RewardError, match=match) as error:
        _score(run_copy, _spec(server.url))
    assert time.monotonic() - started >= min_seconds  # the backoff 0.2 + 0.4 s (and timeouts) happened
    assert server.url in str(error.value)
    assert not _finished(run_copy, "http")
    with pytest.raises(DataError, match="not a finished dataset"):
        read_table(run_copy.rewards(0, "http"), "rewards")


def test_server_down(run_copy: RunLayout) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(RewardError, match=r"connection failed .*gave up after 3 attempts"):
        _score(run_copy, _spec(url))
    assert not Path(run_copy.rewards(0, "http")).exists()


def test_rescore_against_a_broken_server_exits_with_the_message(
    run_copy: RunLayout, scripted: Any, prefect_server: PrefectServer
) -> None:
    """The `rescore` command (a Prefect flow) fails with exit code 1 and the reward error."""
    import json

    server = scripted([500] * 99)
    with use_server(prefect_server):
        result = run_cli(
            "rescore",
            "--run",
            run_copy.run_id,
            "--root",
            run_copy.root,
            "--reward",
            json.dumps(_spec(server.url, key="remote")),
            "--iters",
            "0:1",
        )
    assert result.exit_code == 1, (result.output, result.exception)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: reward server ") and "HTTP 500" in last, result.stderr
    assert not _finished(run_copy, "remote")


def test_stored_nan_never_reaches_an_advantage(run_copy: RunLayout) -> None:
    """Scores written by another tool with a NaN: annotating them fails, no annotations appear."""
    table = read_table(run_copy.rewards(0, REWARD_KEY), "rewards")
    scores = table.column("score").to_numpy().copy()
    scores[5] = np.nan
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(scores))
    write_dataset(
        run_copy.rewards(0, "external"),
        "rewards",
        table.set_column(
            table.schema.get_field_index("reward_key"), "reward_key", pa.array(["external"] * ROWS)
        ),
        inputs={"branches": "x"},
        config_hash="x",
    )
    ctx = load_run(run_copy.run_id, run_copy.root)
    with pytest.raises(DataError, match=r"non-finite score \(nan\) for trajectory"):
        steps.annotate_step(ctx, 0, key="external", mode=MODE)
    assert not (Path(run_copy.annotations(0, "external", MODE)) / MANIFEST_NAME).exists()
    result = run_cli(
        "annotate", "--run", run_copy.run_id, "--root", run_copy.root, "--reward", "external", "--mode", MODE
    )
    assert result.exit_code == 1, result.output
    assert "non-finite score" in result.stderr and "Traceback" not in result.output


def test_every_stored_advantage_is_finite(reference_run: RunLayout) -> None:
    for i in range(2):
        table = read_table(reference_run.annotations(i, REWARD_KEY, MODE), "annotations")
        for column in ("increment", "aggregated", "step_reward", "advantage"):
            assert np.isfinite(table.column(column).to_numpy()).all(), (i, column)
