"""Config hashes of stored runs stay put when a release adds settings (issue 19's options).

A stage's output is reused when its manifest's config hash matches (`stage_config_hash`,
`annotate_config_hash`); a run's identity is `Config.hash()`. All hash only the values that differ
from their defaults, so a new setting left at its default must not change any of them: the hashes
below were computed by the code before `sampling.sampler: dance`, `rollout.same_noise_per_group`,
`update.timestep_fraction`, `advantage.aggregate`, `advantage.weights` and `advantage.best_of_n`
existed, and an existing run resumes without redoing a stage.
"""

from __future__ import annotations

from typing import Any

import pytest

from tpgrpo.config import Config, load_config_data
from tpgrpo.pipeline.lineage import annotate_config_hash, stage_config_hash

SET: dict[str, Any] = {
    "seed": 3,
    "sampling": {"sampler": "sde"},
    "rollout": {"group_size": 4},
    "advantage": {"clip": 3.0},
    "update": {"epochs": 2},
}
# computed at commit 4d5d835 (before the options existed)
BEFORE = {
    "defaults": {
        "config": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "prompts": "53568cf467db82e8ec8bec44f1d29208fcb99fcf7c6c5092b2d7f47e288581c5",
        "rollout": "9a243b3bb7c0fa258e529838fa0167dfcf3f1f60d751ce195b299667eb315718",
        "branch": "c37548c59b9fdafdf8c18a4688d9d3233af1fbc3adb6f2d34280719420a3a98b",
        "update": "a7bff341055266378a27b608ce8eb9e2a568d2e5eab3ff2297eeffaae0c0625e",
        "annotate": "9bbbc3ce36e55b1131979e81065c707bea02ff1e496502801e7379773266389b",
    },
    "set": {
        "config": "408f51e67e77985734c72c1e843ff42b2691ee6fe9cb303110fa1dde4c446948",
        "prompts": "53568cf467db82e8ec8bec44f1d29208fcb99fcf7c6c5092b2d7f47e288581c5",
        "rollout": "4fae426c1db9c1a9178408281b489393c2bc43a2b665521d6fe213d4e5f5986e",
        "branch": "947e5d83a75f1b7bf95f24ffeff273d80f155bef7d7503bdf201cc5bfe5440ac",
        "update": "78bb2475148d10741ab9482ee5f980c6159fe09f59b1a9284964205f47cf18b8",
        "annotate": "6dbfcfed0b1744a068f9cabca1b98ad0984709a720f637be3b80155dd003eff2",
    },
}
STAGES = ("prompts", "rollout", "branch", "update")
# the new settings written out at their defaults
NEW_DEFAULTS = [
    "rollout.same_noise_per_group=false",
    "update.timestep_fraction=1.0",
    "advantage.aggregate=reward",
    "advantage.weights=null",
    "advantage.best_of_n=null",
]


def _hashes(cfg: Config) -> dict[str, str]:
    return {
        "config": cfg.hash(),
        **{s: stage_config_hash(cfg, s) for s in STAGES},
        "annotate": annotate_config_hash(cfg, cfg.reward.mode),
    }


@pytest.mark.parametrize("name", ["defaults", "set"])
@pytest.mark.parametrize("explicit", [False, True])
def test_new_settings_at_their_defaults_keep_every_hash(name: str, explicit: bool) -> None:
    data = {} if name == "defaults" else SET
    cfg = load_config_data(data, NEW_DEFAULTS if explicit else [])
    assert _hashes(cfg) == BEFORE[name]


@pytest.mark.parametrize(
    ("setting", "changed"),
    [
        ("sampling.sampler=dance", {"config", "rollout", "branch", "update"}),
        ("rollout.same_noise_per_group=true", {"config", "rollout", "branch", "update"}),
        ("update.timestep_fraction=0.6", {"config", "update"}),
        ("advantage.aggregate=advantage", {"config", "update", "annotate"}),
        ("advantage.weights={shapes: 1, jpeg: 0.5}", {"config", "update", "annotate"}),
        ("advantage.best_of_n=4", {"config", "update", "annotate"}),
    ],
)
def test_each_new_setting_changes_the_hashes_of_what_depends_on_it(setting: str, changed: set[str]) -> None:
    base = _hashes(load_config_data({}))
    new = _hashes(load_config_data({}, [setting]))
    assert {k for k in base if base[k] != new[k]} == changed
