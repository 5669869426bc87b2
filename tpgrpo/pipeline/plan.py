"""The plan of a dataset stage: where it writes, what it reads (at which hashes), its config hash,
and whether it must run (`prepare`: skip / write / refuse a stale output)."""

from __future__ import annotations

from dataclasses import dataclass

from tpgrpo.config import SpecData
from tpgrpo.errors import DataError, UserError
from tpgrpo.pipeline.context import RunContext
from tpgrpo.pipeline.lineage import (
    BEFORE,
    CHECKPOINT,
    LINEAGE,
    SHARDED_STAGES,
    STAGES,
    annotate_config_hash,
    input_uris,
    output_uri,
    score_config_hashes,
    stage_config_hash,
)
from tpgrpo.stages.annotate import stored_reward_keys
from tpgrpo.storage import manifest_hash, prepare_output, read_manifest
from tpgrpo.storage.blobs import read_blob_manifest

DATASET_STAGES = (*SHARDED_STAGES, "annotate")
"""The stages `plan` plans (the update writes a checkpoint too: `pipeline.update`)."""


@dataclass(frozen=True)
class Plan:
    """A dataset stage's output, its inputs' manifest hashes and its config hash."""

    stage: str
    iteration: int
    output: str
    schema: str
    inputs: dict[str, str]
    config_hash: str


def input_hashes(
    ctx: RunContext, stage: str, iteration: int, key: str = "", mode: str = ""
) -> dict[str, str]:
    """Input name -> the current hash of each input of `stage` (`LINEAGE`), in recording order; an
    annotation's inputs include the stored rewards `advantage.weights` combines (none by default).

    Raises:
        DataError: an input is not finished yet.
    """
    combined = stored_reward_keys(ctx.cfg.advantage) if stage == "annotate" else []
    out = {}
    for name, uri in input_uris(ctx.layout, stage, iteration, key, mode, combined).items():
        if name == CHECKPOINT:
            out[name] = read_blob_manifest(uri, ctx.storage_options).hash
        else:
            out[name] = manifest_hash(uri, ctx.storage_options)
    return out


def kept_config_hash(ctx: RunContext, uri: str, accepted: tuple[str, ...]) -> str:
    """`accepted[0]`, or the accepted hash the finished output at `uri` already carries: a run
    stored before a hash recipe took its plain form (`score_config_hashes`) still resumes."""
    try:
        stored = read_manifest(uri, ctx.storage_options).config_hash
    except DataError:  # not finished (or damaged: `prepare` decides)
        return accepted[0]
    return stored if stored in accepted else accepted[0]


def plan(
    ctx: RunContext,
    stage: str,
    iteration: int,
    *,
    spec: SpecData | None = None,
    mode: str | None = None,
    key: str | None = None,
) -> Plan:
    """The plan of a dataset stage; raises `DataError` when an input is not finished yet.

    `key` (annotate only) names stored scores directly, so annotating them never builds the reward
    model; by default it is the key of `spec` (the config's reward when `spec` is None).
    """
    cfg = ctx.cfg
    if stage not in DATASET_STAGES:
        raise UserError(f"unknown dataset stage {stage!r}; choose one of {list(STAGES)}")
    schema = LINEAGE[stage].schema
    if stage in ("rollout", "branch"):
        out = output_uri(ctx.layout, stage, iteration)
        return Plan(
            stage, iteration, out, schema, input_hashes(ctx, stage, iteration), stage_config_hash(cfg, stage)
        )
    spec = cfg.reward.spec if spec is None else spec
    if key is not None and stage != "annotate":
        raise ValueError(f"plan: key= applies to the annotate stage only, not {stage!r}")
    key = key if key is not None else ctx.reward_key(spec)
    if stage == "score":
        out = output_uri(ctx.layout, stage, iteration, key)
        chash = kept_config_hash(ctx, out, score_config_hashes(spec))
        return Plan(stage, iteration, out, schema, input_hashes(ctx, stage, iteration, key), chash)
    mode = mode or cfg.reward.mode
    out = output_uri(ctx.layout, stage, iteration, key, mode)
    inputs = input_hashes(ctx, stage, iteration, key, mode)
    return Plan(stage, iteration, out, schema, inputs, annotate_config_hash(cfg, mode))


def invalidate_command(ctx: RunContext, iteration: int, after: str | None) -> str:
    """The `tpgrpo runs invalidate` command that clears what was built from a changed output."""
    tail = f" --after {after}" if after else ""
    return f"tpgrpo runs invalidate {ctx.layout.run_id} --from {iteration}{tail} --root {ctx.layout.root}"


def stale_hint(ctx: RunContext, stage: str, iteration: int) -> str:
    """What to do about a finished output of `stage` that was built from other inputs."""
    return (
        "its inputs were rebuilt since and differ. Replace it alone with tpgrpo stage "
        f"{stage} --run {ctx.layout.run_id} --iter {iteration} --force, or clear it and everything built "
        f"on it with {invalidate_command(ctx, iteration, BEFORE[stage])} --yes, then train again"
    )


def prepare(ctx: RunContext, p: Plan, force: bool = False) -> str:
    """ "skip" or "write" (debris and forced outputs cleared); raises on stale outputs."""
    return prepare_output(
        p.output,
        inputs=p.inputs,
        config_hash=p.config_hash,
        schema_name=p.schema,
        force=force,
        storage_options=ctx.storage_options,
        stale_hint=stale_hint(ctx, p.stage, p.iteration) if p.stage in BEFORE else None,
    )
