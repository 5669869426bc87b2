"""Run layout: every path built in one place, names validated against traversal."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tpgrpo.errors import UserError

if TYPE_CHECKING:
    from tests.conftest import StorageRoot
from tpgrpo.storage.files import write_atomic
from tpgrpo.storage.layout import RunLayout, list_runs, validate_checkpoint, validate_key, validate_run_id
from tpgrpo.storage.uri import filesystem_for


@pytest.mark.parametrize("root", ["/data/runs", "s3://bucket/prefix"])
def test_layout_paths(root: str) -> None:
    layout = RunLayout(root, "exp-1")
    run = f"{root}/exp-1"
    assert layout.run_dir == run
    assert layout.run_json() == f"{run}/run.json"
    assert layout.lock() == f"{run}/run.lock"
    assert layout.prompts() == f"{run}/prompts"
    assert layout.iteration_dir(3) == f"{run}/iter=0003"
    assert layout.rollouts(3) == f"{run}/iter=0003/rollouts"
    assert layout.branches(3) == f"{run}/iter=0003/branches"
    assert layout.rewards(3, "pickscore") == f"{run}/iter=0003/rewards/pickscore"
    assert (
        layout.annotations(3, "shapes", "tp_constrained")
        == f"{run}/iter=0003/annotations/shapes/tp_constrained"
    )
    assert layout.updates(12345) == f"{run}/iter=12345/updates"
    assert layout.checkpoint(4) == f"{run}/checkpoints/iter=0004"
    assert layout.eval("iter=0004", "geneval") == f"{run}/eval/iter=0004/geneval"


def test_storage_options_stay_out_of_repr_and_equality() -> None:
    secret = {"key": "AKIA", "secret": "do-not-print"}
    layout = RunLayout("s3://b/p", "r", storage_options=secret)
    assert "do-not-print" not in repr(layout)
    assert layout == RunLayout("s3://b/p", "r")


@pytest.mark.parametrize(
    "run_id", ["../etc", "a/b", "..", "", ".hidden", "a..b", "a\\b", "x" * 129, "-x", "a b", None, 3]
)
def test_run_id_refuses_traversal_and_odd_names(run_id: object) -> None:
    with pytest.raises(UserError, match="invalid run id"):
        validate_run_id(run_id)
    with pytest.raises(UserError):
        RunLayout("/data/runs", run_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("run_id", ["a", "Exp_2026-01-01.v2", "0" * 128])
def test_run_id_accepts(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("key", ["../x", "a/b", "Pick", "", "_x", "a..b", "x" * 129, "a b"])
def test_key_refuses(key: str) -> None:
    with pytest.raises(UserError, match="invalid reward key or mode"):
        validate_key(key)
    with pytest.raises(UserError):
        RunLayout("/r", "run").annotations(0, "shapes", key)


@pytest.mark.parametrize("key", ["shapes", "pickscore", "tp_constrained", "ocr-v2.1", "0"])
def test_key_accepts(key: str) -> None:
    assert validate_key(key) == key


def test_checkpoint_names_and_iterations() -> None:
    assert validate_checkpoint("iter=0004") == "iter=0004"
    for bad in ("../iter=1", "a/b", "", "x..y"):
        with pytest.raises(UserError, match="invalid checkpoint name"):
            validate_checkpoint(bad)
    for bad_iteration in (-1, True, 1.0, "3"):
        with pytest.raises(UserError, match="invalid iteration"):
            RunLayout("/r", "run").rollouts(bad_iteration)  # type: ignore[arg-type]


def test_list_iterations_and_runs(storage_root: StorageRoot) -> None:
    layout = RunLayout(storage_root.uri, "run-1", storage_options=storage_root.storage_options)
    assert layout.list_iterations() == []
    fs, _ = filesystem_for(storage_root.uri, storage_root.storage_options)
    for uri in (layout.rollouts(2), layout.rollouts(0), layout.updates(10), layout.checkpoint(5)):
        write_atomic(fs, filesystem_for(f"{uri}/x", storage_root.storage_options)[1], b"x")
    write_atomic(fs, filesystem_for(layout.run_json(), storage_root.storage_options)[1], b"{}")
    write_atomic(
        fs, filesystem_for(f"{storage_root.uri}/no-run-json/x", storage_root.storage_options)[1], b""
    )
    assert layout.list_iterations() == [0, 2, 10]
    assert list_runs(storage_root.uri, storage_root.storage_options) == ["run-1"]
