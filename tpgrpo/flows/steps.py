"""One iteration's stages as plain functions: plan (skip / redo / write), run shards, finalize.

Shared by the Prefect flows (which wrap them in tasks) and the `tpgrpo stage` command. Every
step is idempotent: a finished output whose manifest matches its inputs' hashes and the stage's
config hash is skipped; debris of a crash is cleared and redone; a finished output built from
other inputs is refused unless `force`. Stages never build paths: every URI comes from `RunLayout`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tpgrpo.algorithm import AnnotationConfig
from tpgrpo.config import Config, ModelConfig
from tpgrpo.errors import ConfigError, DataError, UserError
from tpgrpo.schemas.updates import BY_STEP
from tpgrpo.stages import annotate, branch, rollout, score, update
from tpgrpo.stages.checkpoints import initial_state, load_adapter, load_checkpoint, write_checkpoint
from tpgrpo.stages.common import (
    annotate_config_hash,
    score_config_hash,
    shard_groups,
    stage_config_hash,
    window_check,
)
from tpgrpo.stages.prompts import check_prompts_for_reward, run_prompts
from tpgrpo.storage import (
    RunLayout,
    finalize_dataset,
    manifest_hash,
    prepare_output,
    read_manifest,
    read_run_record,
    write_dataset,
)
from tpgrpo.storage.blobs import blob_state, clear_blobs, read_blob_manifest
from tpgrpo.storage.files import write_atomic
from tpgrpo.storage.provenance import code_version
from tpgrpo.storage.uri import filesystem_for

STAGES = ("rollout", "branch", "score", "annotate", "update")

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    return None


# --- context -------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """Everything a step needs: the config and where the run lives."""

    cfg: Config
    layout: RunLayout
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config, run_id: str, root: str | None = None) -> RunContext:
        opts = cfg.storage_options()
        return cls(cfg, RunLayout(root or cfg.storage.root, run_id, opts), opts)

    def policy(self) -> Any:
        """The policy with a LoRA adapter (loaded once per process and model config)."""
        u = self.cfg.update
        return _policy(self.cfg.model.model_dump_json(), u.lora_rank, u.lora_alpha, self.cfg.seed)

    def reward(self, spec: Any = None) -> Any:
        """The reward of `spec` (default: the config's), built once per process."""
        return _reward(json.dumps(self.cfg.reward.spec if spec is None else spec, sort_keys=True))

    def reward_key(self, spec: Any = None) -> str:
        return str(self.reward(spec).key)


_INITIAL_ADAPTERS: dict[int, bytes] = {}


@functools.lru_cache(maxsize=2)
def _policy(model_json: str, rank: int, alpha: float, seed: int) -> Any:
    from tpgrpo.models.factory import load_policy
    from tpgrpo.models.lora import adapter_to_bytes, add_lora

    policy = load_policy(ModelConfig.model_validate_json(model_json))
    add_lora(policy, rank=rank, alpha=alpha, seed=seed)
    _INITIAL_ADAPTERS[id(policy)] = adapter_to_bytes(policy.transformer)  # what checkpoint 0 holds
    return policy


@functools.lru_cache(maxsize=4)
def _reward(spec_json: str) -> Any:
    from tpgrpo.rewards import make_reward

    return make_reward(json.loads(spec_json))


# --- run start -----------------------------------------------------------------------------------


def init_run(ctx: RunContext, log: Log = _quiet) -> None:
    """Create the run (run.json, prompts, checkpoint 0) or check that it is the same run.

    Raises:
        UserError: the run id exists with another config (pick another `--run-id`).
        ConfigError: the prompt set is unreadable, the reward cannot score its prompts, or the SDE
            window breaks SPEC §2's floor on the model's grid (a new run is not created then).
    """
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    fs, path = filesystem_for(layout.run_json(), opts)
    stored = read_run_record(layout)
    if stored is not None:
        if stored.get("config_hash") != cfg.hash():
            raise UserError(
                f"run {layout.run_id!r} already exists with a different config (see {layout.run_json()}); "
                "use another --run-id, or the same config to resume it"
            )
    else:
        rows = run_prompts(cfg)
        problems = check_prompts_for_reward(rows, cfg.reward.spec) + window_check(cfg)
        if problems:
            raise ConfigError(problems)
        record = {
            "run_id": layout.run_id,
            "config": cfg.public_dict(),
            "config_hash": cfg.hash(),
            "code_version": code_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(fs, path, json.dumps(record, indent=1).encode())
        log(f"created run {layout.run_id} at {layout.run_dir}")
    prompts_hash = stage_config_hash(cfg, "prompts")
    decision = prepare_output(
        layout.prompts(), inputs={}, config_hash=prompts_hash, schema_name="prompts", storage_options=opts
    )
    if decision == "write":
        rows = run_prompts(cfg)
        cols = {k: [r[k] for r in rows] for k in ("prompt_id", "prompt", "task", "spec", "split")}
        write_dataset(
            layout.prompts(), "prompts", cols, inputs={}, config_hash=prompts_hash, storage_options=opts
        )
    ckpt0 = layout.checkpoint(0)
    state = blob_state(ckpt0, opts)
    if state != "done":
        from tpgrpo.models.lora import adapter_from_bytes

        if state == "debris":
            clear_blobs(ckpt0, opts)
        policy = ctx.policy()
        adapter_from_bytes(policy.transformer, _INITIAL_ADAPTERS[id(policy)])
        optimizer, ema, train_state = initial_state(cfg, policy)
        write_checkpoint(
            ckpt0,
            policy,
            optimizer,
            ema,
            train_state,
            inputs={},
            config_hash=stage_config_hash(cfg, "update"),
            storage_options=opts,
        )
        log("wrote the initial adapter (checkpoint 0)")


# --- plans: where a stage writes, what it reads, and whether it must run ----------------------------


@dataclass(frozen=True)
class Plan:
    """A dataset stage's output, its inputs' manifest hashes and its config hash."""

    stage: str
    iteration: int
    output: str
    schema: str
    inputs: dict[str, str]
    config_hash: str


def _hash(ctx: RunContext, uri: str) -> str:
    return manifest_hash(uri, ctx.storage_options)


def _ckpt_hash(ctx: RunContext, iteration: int) -> str:
    return read_blob_manifest(ctx.layout.checkpoint(iteration), ctx.storage_options).hash


def plan(
    ctx: RunContext,
    stage: str,
    iteration: int,
    *,
    spec: Any = None,
    mode: str | None = None,
    key: str | None = None,
) -> Plan:
    """The plan of a dataset stage; raises `DataError` when an input is not finished yet.

    `key` (annotate only) names stored scores directly, so annotating them never builds the reward
    model; by default it is the key of `spec` (the config's reward when `spec` is None).
    """
    layout, cfg = ctx.layout, ctx.cfg
    if stage == "rollout":
        inputs = {"prompts": _hash(ctx, layout.prompts()), "checkpoint": _ckpt_hash(ctx, iteration)}
        return Plan(
            stage, iteration, layout.rollouts(iteration), "rollouts", inputs, stage_config_hash(cfg, stage)
        )
    if stage == "branch":
        inputs = {"rollouts": _hash(ctx, layout.rollouts(iteration))}
        return Plan(
            stage, iteration, layout.branches(iteration), "branches", inputs, stage_config_hash(cfg, stage)
        )
    spec = cfg.reward.spec if spec is None else spec
    if key is not None and stage != "annotate":
        raise ValueError(f"plan: key= applies to the annotate stage only, not {stage!r}")
    key = key if key is not None else ctx.reward_key(spec)
    if stage == "score":
        inputs = {"branches": _hash(ctx, layout.branches(iteration))}
        return Plan(
            stage, iteration, layout.rewards(iteration, key), "rewards", inputs, score_config_hash(spec)
        )
    if stage == "annotate":
        mode = mode or cfg.reward.mode
        inputs = {
            "rewards": _hash(ctx, layout.rewards(iteration, key)),
            "rollouts": _hash(ctx, layout.rollouts(iteration)),
        }
        out = layout.annotations(iteration, key, mode)
        return Plan(stage, iteration, out, "annotations", inputs, annotate_config_hash(cfg, mode))
    raise UserError(f"unknown dataset stage {stage!r}; choose one of {list(STAGES)}")


_BEFORE = {"rollout": None, "branch": "rollout", "score": "branch", "annotate": "score", "update": "annotate"}
"""The stage whose output a stage reads (None: rollouts read the checkpoint)."""


def invalidate_command(ctx: RunContext, iteration: int, after: str | None) -> str:
    """The `tpgrpo runs invalidate` command that clears what was built from a changed output."""
    tail = f" --after {after}" if after else ""
    return f"tpgrpo runs invalidate {ctx.layout.run_id} --from {iteration}{tail} --root {ctx.layout.root}"


def stale_hint(ctx: RunContext, stage: str, iteration: int) -> str:
    """What to do about a finished output of `stage` that was built from other inputs."""
    return (
        "its inputs were rebuilt since and differ. Replace it alone with tpgrpo stage "
        f"{stage} --run {ctx.layout.run_id} --iter {iteration} --force, or clear it and everything built "
        f"on it with {invalidate_command(ctx, iteration, _BEFORE[stage])} --yes, then train again"
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
        stale_hint=stale_hint(ctx, p.stage, p.iteration) if p.stage in _BEFORE else None,
    )


# --- outputs that differ from what later datasets were built from ----------------------------------


def _recorded_inputs(ctx: RunContext, uri: str, checkpoint: bool = False) -> dict[str, str] | None:
    """The inputs a finished dataset (or checkpoint) records; None when unfinished or unreadable."""
    try:
        if checkpoint:
            return read_blob_manifest(uri, ctx.storage_options).inputs
        return read_manifest(uri, ctx.storage_options).inputs
    except DataError:
        return None


def _consumers(
    ctx: RunContext, stage: str, iteration: int, key: str, mode: str
) -> list[tuple[str, bool, str]]:
    """(uri, is a checkpoint, input name) of everything stored that reads the output of `stage`."""
    layout, own_key, own_mode = ctx.layout, ctx.reward_key(), ctx.cfg.reward.mode
    i = iteration
    if stage == "rollout":
        keys = sorted({*layout.list_rewards(i), own_key})
        out = [(layout.branches(i), False, "rollouts"), (layout.updates(i), False, "rollouts")]
        out += [
            (layout.annotations(i, k, m), False, "rollouts")
            for k in keys
            for m in layout.list_annotations(i, k)
        ]
        return [*out, (layout.checkpoint(i + 1), True, "rollouts")]
    if stage == "branch":
        return [(layout.rewards(i, k), False, "branches") for k in layout.list_rewards(i)]
    if stage == "score":
        return [(layout.annotations(i, key, m), False, "rewards") for m in layout.list_annotations(i, key)]
    if stage == "annotate":
        if (key, mode) != (own_key, own_mode):
            return []
        return [(layout.updates(i), False, "annotations"), (layout.checkpoint(i + 1), True, "annotations")]
    # update i wrote checkpoint i + 1
    k = i + 1
    out = [(layout.rollouts(k), False, "checkpoint"), (layout.updates(k), False, "checkpoint")]
    out.append((layout.checkpoint(k + 1), True, "checkpoint"))
    for name, reward_key in layout.list_evals():
        if name == f"iter={k:04d}" or name.startswith(f"iter={k:04d}."):
            out.append((layout.eval(name, reward_key), False, "checkpoint"))
    return out


def report_stale_consumers(
    ctx: RunContext, stage: str, iteration: int, new_hash: str, log: Log, key: str = "", mode: str = ""
) -> list[str]:
    """After `stage` wrote an output with hash `new_hash`: the stored datasets and checkpoints that
    were built from another version of it (now stale), announced through `log` with the command that
    invalidates them. A rebuilt output equal to the old one has the old hash: nothing is stale then.

    Returns:
        `list[str]`: the stale consumers' URIs (empty when none).
    """
    stale = []
    for uri, checkpoint, name in _consumers(ctx, stage, iteration, key, mode):
        recorded = _recorded_inputs(ctx, uri, checkpoint)
        if recorded is not None and name in recorded and recorded[name] != new_hash:
            stale.append(uri)
    if not stale:
        return stale
    prefix = ctx.layout.run_dir.rstrip("/") + "/"
    written = {
        "rollout": ctx.layout.rollouts(iteration),
        "branch": ctx.layout.branches(iteration),
        "score": ctx.layout.rewards(iteration, key) if key else "",
        "annotate": ctx.layout.annotations(iteration, key, mode) if key and mode else "",
        "update": ctx.layout.checkpoint(iteration + 1),
    }[stage].removeprefix(prefix)
    names = ", ".join(u.removeprefix(prefix) for u in stale[:4]) + (" …" if len(stale) > 4 else "")
    if stage == "update":
        fix = invalidate_command(ctx, iteration + 1, None)
    elif stage in ("score", "annotate") and key != ctx.reward_key():
        fix = (
            f"tpgrpo annotate --run {ctx.layout.run_id} --reward {key} --mode all --iters {iteration} --force"
        )
    else:
        fix = invalidate_command(ctx, iteration, stage)
    log(
        f"warning: {written} differs from the one it replaced: {len(stale)} later dataset(s) and "
        f"checkpoint(s) were built from the old one and are now stale ({names}); clear them and "
        f"everything built on them with: {fix} (add --yes), then train again"
    )
    return stale


# --- sharded model stages -----------------------------------------------------------------------


def rollout_shard(
    ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: Any = None
) -> dict[str, float]:
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(p.iteration), policy, storage_options=ctx.storage_options)
    return rollout.run_shard(
        ctx.cfg,
        policy,
        run_id=ctx.layout.run_id,
        iteration=p.iteration,
        prompts_uri=ctx.layout.prompts(),
        output=p.output,
        shard=shard,
        num_shards=num_shards,
        storage_options=ctx.storage_options,
    )


def branch_shard(ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: Any = None) -> dict[str, float]:
    policy = ctx.policy()
    load_adapter(ctx.layout.checkpoint(p.iteration), policy, storage_options=ctx.storage_options)
    return branch.run_shard(
        ctx.cfg,
        policy,
        iteration=p.iteration,
        rollouts_uri=ctx.layout.rollouts(p.iteration),
        output=p.output,
        shard=shard,
        num_shards=num_shards,
        storage_options=ctx.storage_options,
    )


def score_shard(ctx: RunContext, p: Plan, shard: int, num_shards: int, spec: Any = None) -> dict[str, float]:
    groups = ctx.cfg.rollout.prompts_per_batch * ctx.cfg.rollout.batches_per_iteration
    g = ctx.cfg.rollout.group_size
    tids = [gr * g + m for gr in shard_groups(groups, shard, num_shards) for m in range(g)]
    return score.run_shard(
        ctx.reward(spec),
        iteration=p.iteration,
        rollouts_uri=ctx.layout.rollouts(p.iteration),
        branches_uri=ctx.layout.branches(p.iteration),
        output=p.output,
        trajectory_ids=tids if num_shards > 1 else None,
        shard=shard,
        storage_options=ctx.storage_options,
    )


SHARD_FUNCS: dict[str, Callable[..., dict[str, float]]] = {
    "rollout": rollout_shard,
    "branch": branch_shard,
    "score": score_shard,
}


def finalize(
    ctx: RunContext, p: Plan, stats: list[dict[str, float]], log: Log = _quiet, spec: Any = None
) -> Any:
    """Write the manifest of a sharded stage, with its shards' summed stats; announces the stored
    datasets built from another version of this output (`report_stale_consumers`)."""
    total = {k: sum(s.get(k, 0.0) for s in stats) for k in stats[0]} if stats else {}
    metrics: dict[str, Any] = {k: v for k, v in total.items() if k not in ("seconds", "model_evals")}
    if p.stage == "branch":  # issue 18: how the completions were estimated (no part of the hash)
        metrics["estimator"] = ctx.cfg.branch.estimator_label
    if p.stage == "score" and total.get("images"):
        metrics["score_mean"] = total["score_sum"] / total["images"]
        if total.get("strict_count"):
            metrics["strict_mean"] = total["strict_sum"] / total["strict_count"]
    manifest = finalize_dataset(
        p.output,
        p.schema,
        inputs=p.inputs,
        config_hash=p.config_hash,
        model_evals=int(total.get("model_evals", 0)),
        metrics=metrics,
        timings={"compute_s": total.get("seconds", 0.0)},
        shards=len(stats),
        storage_options=ctx.storage_options,
    )
    key = ctx.reward_key(spec) if p.stage == "score" else ""
    report_stale_consumers(ctx, p.stage, p.iteration, manifest.hash, log, key=key)
    return manifest


def sharded_step(
    ctx: RunContext, stage: str, iteration: int, force: bool = False, log: Log = _quiet, spec: Any = None
) -> Any:
    """A sharded stage in this process (shards one after another): the CLI's path."""
    p = plan(ctx, stage, iteration, spec=spec)
    if prepare(ctx, p, force) == "skip":
        log(f"{stage} it{iteration}: done, skipped")
        return read_manifest(p.output, ctx.storage_options)
    n = ctx.cfg.rollout.shards
    manifest = finalize(ctx, p, [SHARD_FUNCS[stage](ctx, p, s, n, spec) for s in range(n)], log, spec)
    log(f"{stage} it{iteration}: {manifest.rows} rows, {manifest.model_evals} model evaluations")
    return manifest


# --- annotate and update ----------------------------------------------------------------------


def annotate_step(
    ctx: RunContext,
    iteration: int,
    force: bool = False,
    log: Log = _quiet,
    spec: Any = None,
    mode: str | None = None,
    key: str | None = None,
) -> Any:
    """Annotate one iteration with `mode` (default: the config's) from the scores of `spec`.

    `key` names the stored scores instead of `spec` (no reward model is built).
    """
    mode = mode or ctx.cfg.reward.mode
    key = key if key is not None else ctx.reward_key(spec)
    p = plan(ctx, "annotate", iteration, spec=spec, mode=mode, key=key)
    if prepare(ctx, p, force) == "skip":
        log(f"annotate it{iteration} ({mode}): done, skipped")
        return read_manifest(p.output, ctx.storage_options)
    r = ctx.cfg.reward
    summary = annotate.run(
        iteration=iteration,
        config=AnnotationConfig(mode=mode, initial_step=r.initial_step, balance=r.balance),
        adv_cfg=ctx.cfg.advantage,
        rewards_uri=ctx.layout.rewards(iteration, key),
        rollouts_uri=ctx.layout.rollouts(iteration),
        output=p.output,
        storage_options=ctx.storage_options,
    )
    seconds = summary.pop("seconds")
    manifest = finalize_dataset(
        p.output,
        p.schema,
        inputs=p.inputs,
        config_hash=p.config_hash,
        metrics=summary,
        timings={"compute_s": seconds},
        shards=1,
        storage_options=ctx.storage_options,
    )
    log(
        f"annotate it{iteration} ({mode}): {summary['turning_points']} turning points, {summary['kept']} kept"
    )
    report_stale_consumers(ctx, "annotate", iteration, manifest.hash, log, key=key, mode=mode)
    return manifest


UPDATE_COLUMNS = (
    "iteration",
    "optimizer_step",
    "loss",
    "policy_loss",
    "kl",
    "clip_frac",
    "approx_kl",
    "ratio_mean",
    "grad_norm",
    "lr",
    "epoch",
    "samples",
    *BY_STEP,
)


@dataclass(frozen=True)
class UpdatePlan:
    """The update of one iteration: its inputs' hashes, config hash, annotations, and whether done."""

    inputs: dict[str, str]
    config_hash: str
    annotations: str
    done: Any = None  # the finished checkpoint's manifest; None: outputs cleared, train


def prepare_update(ctx: RunContext, iteration: int, force: bool = False) -> UpdatePlan:
    """Done when the `updates` dataset and checkpoint `iteration + 1` exist and match the inputs;
    otherwise both are cleared for a redo (checkpoint first, so a crash leaves debris, never a
    finished-looking checkpoint of other inputs).

    Raises:
        DataError: the checkpoint was trained from other inputs or config (and not `force`).
    """
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    key, mode = ctx.reward_key(), cfg.reward.mode
    annotations = layout.annotations(iteration, key, mode)
    inputs = {
        "rollouts": _hash(ctx, layout.rollouts(iteration)),
        "annotations": _hash(ctx, annotations),
        "checkpoint": _ckpt_hash(ctx, iteration),
    }
    chash = stage_config_hash(cfg, "update")
    ckpt_out, updates_out = layout.checkpoint(iteration + 1), layout.updates(iteration)
    state = blob_state(ckpt_out, opts)
    if state == "done":
        existing = read_blob_manifest(ckpt_out, opts)
        same = existing.inputs == inputs and existing.config_hash == chash
        if not same and not force:
            raise DataError(
                f"{ckpt_out} was trained from other inputs or config than this run's: "
                + stale_hint(ctx, "update", iteration)
            )
        upd = prepare_output(
            updates_out,
            inputs=inputs,
            config_hash=chash,
            schema_name="updates",
            storage_options=opts,
            stale_hint=stale_hint(ctx, "update", iteration),
        )
        if same and upd == "skip" and not force:
            return UpdatePlan(inputs, chash, annotations, done=existing)
    if state != "missing":
        clear_blobs(ckpt_out, opts)
    prepare_output(
        updates_out, inputs=inputs, config_hash=chash, schema_name="updates", force=True, storage_options=opts
    )
    return UpdatePlan(inputs, chash, annotations)


def update_step(
    ctx: RunContext,
    iteration: int,
    force: bool = False,
    log: Log = _quiet,
    dp: update.DataParallel | None = None,
) -> Any:
    """Train on `iteration`: writes its `updates` dataset and checkpoint `iteration + 1`.

    Skipped when both are done (see `prepare_update`). Data-parallel (`dp`, under torchrun): rank 0
    decides and clears, every rank trains on its slice of each step, rank 0 writes both outputs;
    every rank returns the checkpoint's manifest.
    """
    dp = dp or update.DataParallel()
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    up: UpdatePlan = dp.broadcast(prepare_update(ctx, iteration, force) if dp.rank == 0 else None)
    if up.done is not None:
        log(f"update it{iteration}: done, skipped")
        return up.done

    from tpgrpo.models.state import seeded_rng_state

    policy = ctx.policy()
    optimizer, ema, train_state, _ = load_checkpoint(
        layout.checkpoint(iteration), cfg, policy, storage_options=opts
    )
    started = time.perf_counter()
    rows, stats = update.run(
        cfg,
        policy,
        optimizer,
        ema,
        train_state,
        iteration=iteration,
        rollouts_uri=layout.rollouts(iteration),
        annotations_uri=up.annotations,
        storage_options=opts,
        dp=dp,
    )
    if dp.rank != 0:  # every rank holds the same rows and weights: one writes them
        return dp.broadcast(None)
    train_state.iteration = iteration + 1
    train_state.rng = seeded_rng_state(cfg.seed, iteration + 1)
    metrics = {**update.summarize(rows), "forward_samples": stats["forward_samples"]}
    write_dataset(
        layout.updates(iteration),
        "updates",
        {k: [r[k] for r in rows] for k in UPDATE_COLUMNS},
        inputs=up.inputs,
        config_hash=up.config_hash,
        model_evals=int(stats["model_evals"]),
        metrics=metrics,
        timings={"compute_s": time.perf_counter() - started},
        storage_options=opts,
    )
    manifest = write_checkpoint(
        layout.checkpoint(iteration + 1),
        policy,
        optimizer,
        ema,
        train_state,
        inputs=up.inputs,
        config_hash=up.config_hash,
        storage_options=opts,
    )
    log(f"update it{iteration}: {len(rows)} optimizer steps, mean loss {metrics.get('loss_mean', 0.0):.4g}")
    report_stale_consumers(ctx, "update", iteration, manifest.hash, log)
    return dp.broadcast(manifest)


def run_stage(
    ctx: RunContext,
    stage: str,
    iteration: int,
    force: bool = False,
    log: Log = _quiet,
    spec: Any = None,
    mode: str | None = None,
) -> Any:
    """Run one stage of one iteration in this process (the `tpgrpo stage` command)."""
    if stage in SHARD_FUNCS:
        return sharded_step(ctx, stage, iteration, force, log, spec=spec)
    if stage == "annotate":
        return annotate_step(ctx, iteration, force, log, spec=spec, mode=mode)
    if stage == "update":
        return update_step(ctx, iteration, force, log)
    raise UserError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
