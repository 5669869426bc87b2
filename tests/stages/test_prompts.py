"""`rollout.tasks`: a run trains on the prompts of chosen tasks (`tpgrpo.stages.prompts`)."""

from __future__ import annotations

import pytest

from tpgrpo.config import load_config_data
from tpgrpo.errors import ConfigError
from tpgrpo.stages.prompts import read_prompt_source, run_prompts, select_tasks


def test_select_tasks_keeps_the_chosen_tasks_in_order() -> None:
    rows = read_prompt_source("train")
    kept = select_tasks(rows, ["counting", "color_attr"], "train")
    assert {r["task"] for r in kept} == {"counting", "color_attr"}
    assert kept == [r for r in rows if r["task"] in ("counting", "color_attr")]
    assert len(kept) == 156  # 36 counting + 120 color_attr (bench/results/signal_share.json)
    assert select_tasks(rows, None, "train") is rows


def test_an_unknown_task_names_the_tasks_there_are() -> None:
    with pytest.raises(
        ConfigError, match="'count' not in the prompts of 'train', whose tasks are color_attr, colors"
    ):
        select_tasks(read_prompt_source("train"), ["counting", "count"], "train")


def test_config_tasks() -> None:
    cfg = load_config_data({"rollout": {"tasks": ["counting"]}})
    assert {r["task"] for r in run_prompts(cfg)} == {"counting"}
    assert len(run_prompts(load_config_data({}))) == 332
    for bad in ([], [""], "counting"):
        with pytest.raises(ConfigError, match=r"rollout\.tasks"):
            load_config_data({"rollout": {"tasks": bad}})
