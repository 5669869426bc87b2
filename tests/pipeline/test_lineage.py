"""The lineage table is consistent with itself and with the run layout."""

from __future__ import annotations

from tpgrpo.pipeline.lineage import (
    BEFORE,
    CHECKPOINT,
    LINEAGE,
    SHARDED_STAGES,
    STAGES,
    input_uris,
    output_uri,
)
from tpgrpo.pipeline.shards import SHARD_FUNCS
from tpgrpo.storage import RunLayout


def test_every_input_is_written_by_a_stage_or_is_a_checkpoint() -> None:
    written = {lineage.schema for lineage in LINEAGE.values()}
    for stage, lineage in LINEAGE.items():
        for name in lineage.inputs:
            assert name == CHECKPOINT or name in written, (stage, name)


def test_before_is_the_stage_whose_output_a_stage_reads() -> None:
    for stage in STAGES:
        before = BEFORE[stage]
        if before is None:
            assert CHECKPOINT in LINEAGE[stage].inputs
        else:
            assert LINEAGE[before].schema in LINEAGE[stage].inputs


def test_sharded_stages_have_shard_functions() -> None:
    assert tuple(SHARD_FUNCS) == SHARDED_STAGES


def test_uris_come_from_the_layout(tmp_path: object) -> None:
    layout = RunLayout(str(tmp_path), "r")
    assert output_uri(layout, "annotate", 3, "shapes", "tp") == layout.annotations(3, "shapes", "tp")
    assert input_uris(layout, "update", 3, "shapes", "tp") == {
        "rollouts": layout.rollouts(3),
        "annotations": layout.annotations(3, "shapes", "tp"),
        "checkpoint": layout.checkpoint(3),
    }
    assert input_uris(layout, "rollout", 0) == {
        "prompts": layout.prompts(),
        "checkpoint": layout.checkpoint(0),
    }
