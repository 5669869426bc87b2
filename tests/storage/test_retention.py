"""Retention: latents of old iterations dropped; images, rewards, annotations and readability kept."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tpgrpo.errors import DataError, UserError
from tpgrpo.schemas import decode_tensor_column
from tpgrpo.storage import (
    DatasetWriter,
    RunLayout,
    drop_latents,
    finalize_dataset,
    read_manifest,
    read_table,
    verify_dataset,
    write_dataset,
)
from tpgrpo.storage import retention as retention_module

from . import samples

if TYPE_CHECKING:
    from tests.conftest import StorageRoot

CONFIG = "c" * 64
LATENTS = ["states", "ode_states"]


def _make_run(root: StorageRoot, iterations: int, part_rows: int = 3) -> RunLayout:
    layout = RunLayout(root.uri, "run-a", storage_options=root.storage_options)
    options = root.storage_options
    for i in range(iterations):
        with DatasetWriter(
            layout.rollouts(i), "rollouts", max_part_rows=3, storage_options=options
        ) as writer:
            writer.write(samples.rollouts(8, iteration=i))
        finalize_dataset(
            layout.rollouts(i), "rollouts", inputs={}, config_hash=CONFIG, storage_options=options
        )
        write_dataset(layout.branches(i), "branches", samples.branches(8, iteration=i), inputs={},
                      config_hash=CONFIG, storage_options=options)  # fmt: skip
        write_dataset(layout.rewards(i, "shapes"), "rewards", samples.rewards(8, iteration=i), inputs={},
                      config_hash=CONFIG, storage_options=options)  # fmt: skip
        annotations = samples.annotations(6, iteration=i)
        write_dataset(layout.annotations(i, "shapes", "tp"), "annotations", annotations, inputs={},
                      config_hash=CONFIG, storage_options=options)  # fmt: skip
    return layout


def _others(layout: RunLayout, i: int) -> list[Any]:
    options = layout.storage_options
    return [
        read_manifest(uri, options)
        for uri in (layout.branches(i), layout.rewards(i, "shapes"), layout.annotations(i, "shapes", "tp"))
    ]


def test_drop_latents_keeps_the_last_iterations_and_everything_else(storage_root: StorageRoot) -> None:
    layout = _make_run(storage_root, iterations=3, part_rows=8)
    options = storage_root.storage_options
    before = {i: read_table(layout.rollouts(i), "rollouts", storage_options=options) for i in range(3)}
    manifests = {i: read_manifest(layout.rollouts(i), options) for i in range(3)}
    others = {i: _others(layout, i) for i in range(3)}

    results = drop_latents(layout, keep_last=1)

    assert [r.uri for r in results] == [layout.rollouts(0), layout.rollouts(1)]
    for i, result in zip((0, 1), results, strict=True):
        after = read_table(layout.rollouts(i), "rollouts", storage_options=options)
        assert after.column("states").null_count == after.num_rows == 8
        assert after.column("ode_states").null_count == 8
        # images, ids and log-probs are kept
        assert after.drop_columns(LATENTS).equals(before[i].drop_columns(LATENTS))
        manifest = read_manifest(layout.rollouts(i), options)
        assert manifest.hash == manifests[i].hash and manifest.rows == 8
        assert manifest.retention is not None and manifest.retention["dropped"] == sorted(LATENTS)
        assert manifest.retention["bytes_before"] == manifests[i].total_bytes == result.bytes_before
        assert manifest.total_bytes == result.bytes_after < result.bytes_before / 2
        verify_dataset(layout.rollouts(i), storage_options=options)
        with pytest.raises(DataError, match="retention"):
            decode_tensor_column(after, "states")
    assert read_manifest(layout.rollouts(2), options) == manifests[2]
    assert read_table(layout.rollouts(2), "rollouts", storage_options=options).equals(before[2])
    assert {i: _others(layout, i) for i in range(3)} == others  # branches, rewards, annotations untouched

    assert drop_latents(layout, keep_last=1) == []  # idempotent
    assert [r.uri for r in drop_latents(layout, keep_last=0)] == [layout.rollouts(2)]


def test_interrupted_retention_is_refused_then_resumed(
    storage_root: StorageRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _make_run(storage_root, iterations=1)
    options = storage_root.storage_options
    original_move = retention_module.move
    moves: list[str] = []

    def crash_on_second_move(fs: Any, source: str, destination: str) -> None:
        if moves:
            raise OSError("simulated crash between part moves")
        moves.append(source)
        original_move(fs, source, destination)

    monkeypatch.setattr(retention_module, "move", crash_on_second_move)
    with pytest.raises(OSError, match="simulated crash"):
        drop_latents(layout, keep_last=0)
    with pytest.raises(DataError, match="retention run was interrupted, rerun it"):
        read_table(layout.rollouts(0), "rollouts", storage_options=options)
    monkeypatch.undo()

    (result,) = drop_latents(layout, keep_last=0)  # resumes from the staged manifest
    assert result.bytes_after < result.bytes_before
    table = read_table(layout.rollouts(0), "rollouts", storage_options=options)
    assert table.column("states").null_count == 8
    verify_dataset(layout.rollouts(0), storage_options=options)


def test_retention_interrupted_before_its_commit_point_changes_nothing(
    storage_root: StorageRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _make_run(storage_root, iterations=1)
    options = storage_root.storage_options
    before = read_table(layout.rollouts(0), "rollouts", storage_options=options)

    def crash(*args: Any) -> None:
        raise OSError("simulated crash before the staged manifest")

    monkeypatch.setattr(retention_module, "store_manifest", crash)
    with pytest.raises(OSError, match="simulated crash"):
        drop_latents(layout, keep_last=0)
    assert read_table(layout.rollouts(0), "rollouts", storage_options=options).equals(before)
    monkeypatch.undo()
    assert len(drop_latents(layout, keep_last=0)) == 1
    assert (
        read_table(layout.rollouts(0), "rollouts", storage_options=options).column("states").null_count == 8
    )


def test_keep_last_is_validated(tmp_path: object) -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(UserError, match="keep_last"):
            drop_latents(RunLayout(str(tmp_path), "r"), keep_last=bad)  # type: ignore[arg-type]
