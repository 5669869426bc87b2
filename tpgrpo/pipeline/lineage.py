"""The lineage table: which dataset each stage reads and writes, its schema, and its config hash.

One table, read by the run (`pipeline.plan`, `pipeline.update`) and by `tpgrpo audit verify`
(`report.verify`), so what a stage records as its inputs and what the audit expects cannot drift:

| stage    | writes (schema) | reads (manifest input names)        | config hash                  |
|----------|-----------------|-------------------------------------|------------------------------|
| prompts  | prompts         | –                                   | sections `rollout.prompts/tasks` |
| rollout  | rollouts        | prompts, checkpoint K               | sections (`STAGE_SECTIONS`)  |
| branch   | branches        | rollouts                            | sections                     |
| score    | rewards/<key>   | branches                            | the reward spec              |
| annotate | annotations/<key>/<mode> | rewards, rollouts          | mode, switches, advantage    |
| update   | updates + checkpoint K+1 | rollouts, annotations, checkpoint K | sections             |
| evaluate | eval/<ckpt>/<key> | checkpoint                        | `eval_config_hash`           |

The config hashes leave out `SPEED_ONLY` keys (speed, never results) and values equal to their
defaults, so a release that adds a setting, or a rerun with another shard count, still finds its
finished outputs. Changing any recipe here changes stored runs' hashes: `tests/pipeline` pins them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tpgrpo.config import Config, SpecData
from tpgrpo.pipeline.spec import plain_spec
from tpgrpo.storage import RunLayout
from tpgrpo.storage.provenance import canonical_json, config_hash, sha256_hex

CHECKPOINT = "checkpoint"
"""The input name of checkpoint K (the adapter, optimizer and EMA a stage of iteration K starts from)."""


@dataclass(frozen=True)
class Lineage:
    """What one stage writes and reads.

    Args:
        schema (`str`): the schema (and dataset) name of its output.
        inputs (`tuple[str, ...]`): the datasets it reads, by the name its manifest records them
            under (a schema name, or `CHECKPOINT`), in the order they are recorded.
        sections (`tuple[str, ...] | None`): the config sections its config hash covers; None: the
            stage hashes its own arguments (score: a reward spec; annotate: a mode).
    """

    schema: str
    inputs: tuple[str, ...]
    sections: tuple[str, ...] | None = None


LINEAGE: dict[str, Lineage] = {
    "prompts": Lineage("prompts", (), ("rollout.prompts", "rollout.tasks")),
    "rollout": Lineage("rollouts", ("prompts", CHECKPOINT), ("seed", "model", "sampling", "rollout")),
    "branch": Lineage("branches", ("rollouts",), ("seed", "model", "sampling", "rollout", "branch")),
    "score": Lineage("rewards", ("branches",)),
    "annotate": Lineage("annotations", ("rewards", "rollouts")),
    "update": Lineage(
        "updates",
        ("rollouts", "annotations", CHECKPOINT),
        ("seed", "model", "sampling", "rollout", "reward", "advantage", "update"),
    ),
    "evaluate": Lineage("eval", (CHECKPOINT,)),
}

STAGES = ("rollout", "branch", "score", "annotate", "update")
"""The stages of one iteration, in order."""

SHARDED_STAGES = STAGES[:3]
"""The model stages split over prompt-group shards (`rollout.shards`); annotate and update run whole."""

BEFORE: dict[str, str | None] = {
    "rollout": None,
    "branch": "rollout",
    "score": "branch",
    "annotate": "score",
    "update": "annotate",
}
"""The stage whose output a stage reads (None: rollouts read the checkpoint)."""

SPEED_ONLY: tuple[tuple[str, str], ...] = (
    ("model", "eval_batch"),
    ("rollout", "shards"),
    ("branch", "chunk_size"),
    ("update", "ddp_procs"),
    ("update", "gradient_checkpointing"),
)
"""Knobs that change speed, never results: excluded from hashes so a rerun with another chunk size,
shard count or number of update processes still finds its finished outputs (the data-parallel
update equals the single-process one up to float summation order, docs/scale-out.md)."""


def dataset_uri(layout: RunLayout, name: str, iteration: int, key: str = "", mode: str = "") -> str:
    """Where dataset `name` (a schema name or `CHECKPOINT`) of `iteration` lives.

    `key` is the reward key (rewards, annotations), `mode` the reward mode (annotations).
    """
    if name == "prompts":
        return layout.prompts()
    if name == CHECKPOINT:
        return layout.checkpoint(iteration)
    if name == "rollouts":
        return layout.rollouts(iteration)
    if name == "branches":
        return layout.branches(iteration)
    if name == "rewards":
        return layout.rewards(iteration, key)
    if name == "annotations":
        return layout.annotations(iteration, key, mode)
    if name == "updates":
        return layout.updates(iteration)
    raise ValueError(f"no dataset {name!r} in an iteration")


def output_uri(layout: RunLayout, stage: str, iteration: int, key: str = "", mode: str = "") -> str:
    """The output dataset of `stage` in `iteration` (the update's `updates`; it also writes
    checkpoint `iteration + 1`)."""
    return dataset_uri(layout, LINEAGE[stage].schema, iteration, key, mode)


def input_uris(
    layout: RunLayout,
    stage: str,
    iteration: int,
    key: str = "",
    mode: str = "",
    combined: tuple[str, ...] | list[str] = (),
) -> dict[str, str]:
    """Input name -> URI of what `stage` reads in `iteration`, in recording order.

    `combined` (annotate only): the stored reward keys `advantage.weights` combines with the
    annotated one (`stages.annotate.stored_reward_keys`), recorded as inputs `rewards/<key>`.
    """
    out = {name: dataset_uri(layout, name, iteration, key, mode) for name in LINEAGE[stage].inputs}
    if combined and stage != "annotate":
        raise ValueError(f"input_uris: combined rewards are inputs of annotate only, not {stage!r}")
    for k in combined:
        out[f"rewards/{k}"] = layout.rewards(iteration, k)
    return out


# --- config hashes -----------------------------------------------------------------------------


def stage_config_hash(cfg: Config, stage: str) -> str:
    """Hash of the config sections `stage` depends on (`Lineage.sections`), over the values that
    differ from their defaults (see `Config.hash`), speed-only keys left out."""
    sections = LINEAGE[stage].sections
    if sections is None:
        raise ValueError(f"stage {stage!r} hashes its own arguments, not config sections")
    data = cfg.public_dict(exclude_defaults=True)
    for section, key in SPEED_ONLY:
        data.get(section, {}).pop(key, None)
    picked: dict[str, Any] = {}
    for name in sections:
        head, _, tail = name.partition(".")
        picked[name] = data.get(head, {}).get(tail) if tail else data.get(head)
    return config_hash({"stage": stage, **picked})


def score_config_hash(spec: SpecData) -> str:
    """Hash of a reward spec (the score stage's only setting), in its plain form: `"jpeg"` and
    `{"name": "jpeg"}` hash the same."""
    return config_hash({"stage": "score", "spec": plain_spec(spec)})


def score_config_hashes(spec: SpecData) -> tuple[str, ...]:
    """Every config hash a finished score output of `spec` may carry: `score_config_hash` first, then
    the hash of the spec as written, which tpgrpo ≤ 4d5d835 stored for a `{"name": n}` spec."""
    return _with_legacy(score_config_hash(spec), config_hash({"stage": "score", "spec": spec}))


def annotate_config_hash(cfg: Config, mode: str) -> str:
    """Hash of what an annotation depends on: the mode, its switches and the advantage settings."""
    return config_hash(
        {
            "stage": "annotate",
            "mode": mode,
            "initial_step": cfg.reward.initial_step,
            "balance": cfg.reward.balance,
            "advantage": cfg.advantage.model_dump(mode="json", exclude_defaults=True),
        }
    )


def eval_config_hash(
    cfg: Config, spec: SpecData, steps: int, replicates: int, prompts: list[dict[str, Any]]
) -> str:
    """What an evaluation's output depends on besides the checkpoint (the spec in its plain form)."""
    return eval_config_hashes(cfg, spec, steps, replicates, prompts)[0]


def eval_config_hashes(
    cfg: Config, spec: SpecData, steps: int, replicates: int, prompts: list[dict[str, Any]]
) -> tuple[str, ...]:
    """Every config hash a finished evaluation may carry (see `score_config_hashes`)."""
    return _with_legacy(
        _eval_hash(cfg, plain_spec(spec), steps, replicates, prompts),
        _eval_hash(cfg, spec, steps, replicates, prompts),
    )


def _with_legacy(current: str, legacy: str) -> tuple[str, ...]:
    return (current,) if legacy == current else (current, legacy)


def _eval_hash(
    cfg: Config, spec: SpecData, steps: int, replicates: int, prompts: list[dict[str, Any]]
) -> str:
    data = cfg.public_dict()
    model = {k: v for k, v in data["model"].items() if k != "eval_batch"}
    prompt_hash = sha256_hex(canonical_json([[r["prompt_id"], r["prompt"], r["task"]] for r in prompts]))
    return config_hash(
        {
            "stage": "evaluate",
            "seed": data["seed"],
            "model": model,
            "guidance_scale": data["sampling"]["guidance_scale"],
            "spec": spec,
            "steps": steps,
            "replicates": replicates,
            "prompts": prompt_hash,
        }
    )
