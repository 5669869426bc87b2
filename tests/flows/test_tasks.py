"""A run on chosen tasks (`rollout.tasks`): its prompts dataset, its default evaluation prompts."""

from __future__ import annotations

from pathlib import Path

from tpgrpo.config import load_config_data
from tpgrpo.pipeline import steps
from tpgrpo.pipeline.evaluate import eval_prompts
from tpgrpo.pipeline.lineage import stage_config_hash
from tpgrpo.storage import read_table

from .conftest import small_config


def test_a_run_on_chosen_tasks(flow_pipeline: Path, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    cfg = load_config_data(small_config(flow_pipeline, root, **{"rollout.tasks": ["counting", "position"]}))
    ctx = steps.RunContext.create(cfg, "tasks")
    steps.init_run(ctx)
    tasks = read_table(ctx.layout.prompts(), "prompts").column("task").to_pylist()
    assert set(tasks) == {"counting", "position"} and len(tasks) == 36 + 160
    # evaluated by default on the held-out prompts of the same tasks
    source, rows = eval_prompts(ctx, None, None)
    assert source == "test:counting+position"
    assert {r["task"] for r in rows} == {"counting", "position"}
    assert len(eval_prompts(ctx, "test", None)[1]) == 146  # an explicit set is taken whole
    # the prompts dataset's hash sees the choice; a config without it hashes as before the key existed
    plain = load_config_data(small_config(flow_pipeline, root))
    assert stage_config_hash(cfg, "prompts") != stage_config_hash(plain, "prompts")
    assert plain.public_dict(exclude_defaults=True)["rollout"].get("tasks") is None
