"""Config hashes are part of every stored run: a stage whose hash changes is redone on resume and
its finished outputs are refused as built with other settings. These values were computed by the
code at commit 4d5d835 (before `tpgrpo.pipeline` existed) and must never change."""

from __future__ import annotations

from tpgrpo.config import load_config_data
from tpgrpo.pipeline.lineage import (
    annotate_config_hash,
    eval_config_hash,
    eval_config_hashes,
    score_config_hash,
    score_config_hashes,
    stage_config_hash,
)
from tpgrpo.pipeline.spec import RewardSpec, plain_spec

DATA = {
    "name": "pin",
    "seed": 3,
    "model": {"eval_batch": 4},  # speed only: in no stage hash
    "rollout": {"group_size": 4, "shards": 2},  # shards: speed only
    "reward": {"spec": "jpeg", "mode": "tp"},
    "update": {"lr": 1e-4},
}


def test_run_config_hash_is_pinned() -> None:
    assert load_config_data(DATA).hash() == "9d096a6c18ecc40168747e3e3c206147170bd35b234984a5f95a712579ec7237"


def test_stage_config_hashes_are_pinned() -> None:
    cfg = load_config_data(DATA)
    assert (
        stage_config_hash(cfg, "prompts")
        == "53568cf467db82e8ec8bec44f1d29208fcb99fcf7c6c5092b2d7f47e288581c5"
    )
    assert (
        stage_config_hash(cfg, "rollout")
        == "02b1c9a9821166f1c6886a1b25164054d0f97c8518faf0883386f1726f5ba109"
    )
    assert (
        stage_config_hash(cfg, "branch") == "8e3cd4e7e7728eb3cfe225e4eed1019dad6dd370b817f6ef65c7aa1b5d068b63"
    )
    assert (
        stage_config_hash(cfg, "update") == "a378ab4beece28710620a68d76a8b4498c26b27611be3f813189508de7fdb398"
    )
    assert (
        annotate_config_hash(cfg, "tp") == "7fcc149a87625fac245f71712521e3fce11581856574fdb0fe6c4300be5016b0"
    )


def test_speed_only_keys_leave_stage_hashes_alone() -> None:
    # (a speed-only key set off its default in one config and left at it in the other still
    # differs: the section is then `{}` against absent; that quirk is part of stored hashes)
    slow = load_config_data({**DATA, "model": {"eval_batch": 2}, "rollout": {"group_size": 4, "shards": 2}})
    fast = load_config_data({**DATA, "model": {"eval_batch": 8}, "rollout": {"group_size": 4, "shards": 4}})
    for stage in ("prompts", "rollout", "branch", "update"):
        assert stage_config_hash(slow, stage) == stage_config_hash(fast, stage)


def test_score_and_eval_hashes_are_pinned() -> None:
    assert score_config_hash("jpeg") == "3c7c0893fed6a40eedaabcf146f1a2f8b3a82926b4b07652dcda8f1259f84c54"
    assert (
        score_config_hash({"name": "jpeg", "quality": 50})
        == "737bd7a4831754282ba68fe6250a19770e808bad6b199f2c95d11056ba7790dd"
    )
    prompts = [{"prompt_id": 1, "prompt": "a red circle", "task": "color_attr"}]
    assert (
        eval_config_hash(load_config_data(DATA), "jpeg", 10, 2, prompts)
        == "2a08bda3019a883f6c96caa6f6ed7c44a52ae471f8d27c7e7b9811346d9805fa"
    )


def test_a_name_and_a_name_only_mapping_are_one_spec() -> None:
    assert RewardSpec.parse("jpeg") == RewardSpec.parse({"name": "jpeg"}) == RewardSpec("jpeg")
    assert RewardSpec.parse({"name": "jpeg", "quality": 50}) == RewardSpec("jpeg", {"quality": 50})
    assert RewardSpec.parse({"quality": 50}) is None  # no name: make_reward says what is wrong
    assert plain_spec({"name": "jpeg"}) == "jpeg"
    assert plain_spec({"name": "jpeg", "quality": 50}) == {"name": "jpeg", "quality": 50}
    assert score_config_hash({"name": "jpeg"}) == score_config_hash("jpeg")
    prompts = [{"prompt_id": 1, "prompt": "a red circle", "task": "color_attr"}]
    cfg = load_config_data(DATA)
    assert eval_config_hash(cfg, {"name": "jpeg"}, 10, 2, prompts) == eval_config_hash(
        cfg, "jpeg", 10, 2, prompts
    )


def test_name_only_mappings_keep_the_hash_older_runs_stored() -> None:
    # 4d5d835 hashed `{"name": "jpeg"}` as written: outputs carrying that hash are still accepted
    legacy = "34c56125bea8c5f56d29d650d269358e8fac1429daddbe5b062731b68ddebe07"
    assert score_config_hashes({"name": "jpeg"}) == (score_config_hash("jpeg"), legacy)
    assert score_config_hashes("jpeg") == (score_config_hash("jpeg"),)
    prompts = [{"prompt_id": 1, "prompt": "a red circle", "task": "color_attr"}]
    cfg = load_config_data(DATA)
    assert len(eval_config_hashes(cfg, {"name": "jpeg"}, 10, 2, prompts)) == 2
    assert len(eval_config_hashes(cfg, {"name": "jpeg", "quality": 50}, 10, 2, prompts)) == 1
