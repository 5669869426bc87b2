"""The `evaluate` flow: pure-ODE samples of held-out prompts with a checkpoint's EMA weights, scored.

Per checkpoint `K` (0 is the base model: its adapter is the identity), the policy loads the EMA
LoRA weights of `checkpoints/iter=K`, samples every evaluation prompt (× replicates) with the ODE
sampler and scores the images; the rows go to `eval/iter=K/<reward_key>` (`eval/iter=K.steps=S/…`
when the step count is not the config's `sampling.eval_steps`). The noise of each sample depends
on the run seed, the prompt row and the replicate only, so checkpoints are compared on paired samples.

Idempotent like the stages: the manifest records the checkpoint's hash as input and a hash of the
reward, steps, prompts and sampling settings; an identical rerun returns at once, other settings
over a finished output are refused unless `force`. Evaluation does not take the run lock, so it
can score finished checkpoints while training goes on.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import flow, task
from prefect.logging import get_run_logger

from tpgrpo.errors import ConfigError, UserError
from tpgrpo.flows.rescore import TASK_OPTIONS
from tpgrpo.flows.steps import RunContext
from tpgrpo.storage import finalize_dataset, prepare_output, read_manifest, read_table
from tpgrpo.storage.provenance import canonical_json, config_hash, sha256_hex
from tpgrpo.tracking import run_tracker


def _log(message: str) -> None:
    get_run_logger().info(message)


def eval_name(checkpoint: int, steps: int, default_steps: int) -> str:
    """The directory name of an evaluation: `iter=0002`, or `iter=0002.steps=10` off the default."""
    name = f"iter={checkpoint:04d}"
    return name if steps == default_steps else f"{name}.steps={steps}"


def eval_prompts(
    ctx: RunContext, source: str | None, per_task: int | None
) -> tuple[str, list[dict[str, Any]]]:
    """The evaluation prompt rows: `source` (a split or a file), default the held-out split.

    Args:
        source: `"test"`/`"train"` (embedded sets) or a `.jsonl`/`.txt` file; None: `test` when the
            run trains on the embedded `train` set, restricted to the run's `rollout.tasks`.
        per_task: keep the first `per_task` prompts of each task (a quick, still per-task, check).

    Raises:
        UserError: no held-out default for a run trained on its own prompt file, `per_task` < 1,
            or prompts the run's reward cannot score.
    """
    from tpgrpo.stages.prompts import read_prompt_source, select_tasks

    if source is None:
        if ctx.cfg.rollout.prompts != "train":
            raise UserError(
                f"run {ctx.layout.run_id!r} trains on {ctx.cfg.rollout.prompts!r}, which has no held-out "
                "split; pass --prompts FILE (a .jsonl or .txt prompt file) to evaluate on"
            )
        # the held-out prompts of the tasks the run trains on (`rollout.tasks`)
        rows = select_tasks(read_prompt_source("test"), ctx.cfg.rollout.tasks, "test")
        source = "test" if ctx.cfg.rollout.tasks is None else f"test:{'+'.join(ctx.cfg.rollout.tasks)}"
    else:
        rows = read_prompt_source(source)
    if per_task is not None:
        if per_task < 1:
            raise UserError(f"--prompts-per-task must be at least 1, got {per_task}")
        taken: dict[str, int] = {}
        kept = []
        for r in rows:
            if taken.get(r["task"], 0) < per_task:
                taken[r["task"]] = taken.get(r["task"], 0) + 1
                kept.append(r)
        rows = kept
    return source, rows


def eval_config_hash(
    ctx: RunContext, spec: Any, steps: int, replicates: int, prompts: list[dict[str, Any]]
) -> str:
    """What an evaluation's output depends on besides the checkpoint."""
    cfg = ctx.cfg.public_dict()
    model = {k: v for k, v in cfg["model"].items() if k != "eval_batch"}
    prompt_hash = sha256_hex(canonical_json([[r["prompt_id"], r["prompt"], r["task"]] for r in prompts]))
    return config_hash(
        {
            "stage": "evaluate",
            "seed": cfg["seed"],
            "model": model,
            "guidance_scale": cfg["sampling"]["guidance_scale"],
            "spec": spec,
            "steps": steps,
            "replicates": replicates,
            "prompts": prompt_hash,
        }
    )


def _flat_metrics(summary: dict[str, Any], steps: int, replicates: int, source: str) -> dict[str, Any]:
    """The summary as manifest metrics (JSON scalars; per task as `task.<name>.<field>`)."""
    out: dict[str, Any] = {"steps": steps, "replicates": replicates, "prompts": source, "n": summary["n"]}
    for k in ("score", "strict", "task_mean_strict"):
        if summary.get(k) is not None:
            out[k] = summary[k]
    for t, v in summary["tasks"].items():
        for k in ("n", "score", "strict"):
            if v.get(k) is not None:
                out[f"task.{t}.{k}"] = v[k]
    for group in ("requirements", "quality"):
        for k, v in summary.get(group, {}).items():
            out[f"{group}.{k}"] = v
    return out


def read_summary(uri: str, storage_options: Any = None) -> dict[str, Any]:
    """Per-task summary (`stages.evaluate.summarize`) of a finished eval dataset."""
    from tpgrpo.stages.evaluate import summarize

    cols = ["task", "score", "strict", "details"]
    table = read_table(uri, "eval", columns=cols, storage_options=storage_options)
    return summarize({c: table.column(c).to_pylist() for c in cols})


def evaluate_checkpoint(
    ctx: RunContext,
    checkpoint: int,
    spec: Any,
    *,
    steps: int,
    prompt_source: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Evaluate one checkpoint into `eval/…` (skipped when done); returns `{uri, name, summary, …}`."""
    from tpgrpo.stages.checkpoints import load_adapter
    from tpgrpo.stages.evaluate import evaluate
    from tpgrpo.storage.blobs import read_blob_manifest

    layout, opts, cfg = ctx.layout, ctx.storage_options, ctx.cfg
    source, prompts = eval_prompts(ctx, prompt_source, per_task)
    reward = ctx.reward(spec)
    name = eval_name(checkpoint, steps, cfg.sampling.eval_steps)
    out = layout.eval(name, reward.key)
    inputs = {"checkpoint": read_blob_manifest(layout.checkpoint(checkpoint), opts).hash}
    chash = eval_config_hash(ctx, spec if spec is not None else cfg.reward.spec, steps, replicates, prompts)
    decision = prepare_output(
        out, inputs=inputs, config_hash=chash, schema_name="eval", force=force, storage_options=opts
    )
    if decision == "skip":
        if log:
            log(f"evaluate {name}/{reward.key}: done, skipped")
        manifest = read_manifest(out, opts)
    else:
        policy = ctx.policy()
        load_adapter(layout.checkpoint(checkpoint), policy, ema=True, storage_options=opts)
        result = evaluate(
            policy,
            reward,
            prompts,
            checkpoint=name,
            replicates=replicates,
            seed=cfg.seed,
            num_steps=steps,
            guidance_scale=cfg.sampling.guidance_scale,
            height=cfg.model.height,
            width=cfg.model.width,
            batch=cfg.model.eval_batch,
            output=out,
            storage_options=opts,
        )
        manifest = finalize_dataset(
            out,
            "eval",
            inputs=inputs,
            config_hash=chash,
            model_evals=len(prompts) * replicates * steps,
            metrics=_flat_metrics(result["summary"], steps, replicates, source),
            timings={"compute_s": result["seconds"]},
            shards=1,
            storage_options=opts,
        )
        if log:
            log(
                f"evaluate {name}/{reward.key}: {manifest.rows} images, "
                f"mean score {manifest.metrics['score']:.4f}"
            )
    return {
        "checkpoint": checkpoint,
        "name": name,
        "reward_key": reward.key,
        "uri": out,
        "rows": manifest.rows,
        "summary": read_summary(out, opts),
    }


@task(name="evaluate-checkpoint", **TASK_OPTIONS)
def evaluate_task(
    ctx: RunContext,
    checkpoint: int,
    spec: Any,
    steps: int,
    prompt_source: str | None,
    per_task: int | None,
    replicates: int,
    force: bool,
) -> dict[str, Any]:
    return evaluate_checkpoint(
        ctx,
        checkpoint,
        spec,
        steps=steps,
        prompt_source=prompt_source,
        per_task=per_task,
        replicates=replicates,
        force=force,
        log=_log,
    )


@flow(name="tpgrpo-evaluate", log_prints=True, persist_result=False)
def evaluate_flow(
    ctx: RunContext,
    checkpoints: list[int],
    spec: Any,
    steps: int,
    prompt_source: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Prefect flow: evaluate each checkpoint in turn (see `evaluate_checkpoint`)."""
    run_task = evaluate_task.with_options(retries=ctx.cfg.flow.io_retries)
    return [run_task(ctx, k, spec, steps, prompt_source, per_task, replicates, force) for k in checkpoints]


def select_checkpoints(ctx: RunContext, text: str | None) -> list[int]:
    """`--checkpoint`: `K`, `latest` (default) or `all`, among the run's finished checkpoints.

    Raises:
        UserError: bad syntax or a checkpoint the run does not have.
    """
    from tpgrpo.report.runs import finished_checkpoints

    have = finished_checkpoints(ctx)
    if not have:
        raise UserError(
            f"run {ctx.layout.run_id!r} has no finished checkpoint; train it first (tpgrpo train)"
        )
    if text is None or text == "latest":
        return [have[-1]]
    if text == "all":
        stranded = finished_after_gap(ctx, have[-1] + 1)
        if stranded:
            raise UserError(
                f"checkpoint {have[-1] + 1} of run {ctx.layout.run_id!r} is missing or unfinished while "
                f"later checkpoints ({', '.join(map(str, stranded))}) are finished: it was damaged or "
                f"deleted. See tpgrpo audit verify --run {ctx.layout.run_id}; rerunning tpgrpo train "
                "rebuilds it; --checkpoint K evaluates one finished checkpoint meanwhile"
            )
        return have
    if not text.strip().isdigit():
        raise UserError(f"invalid --checkpoint {text!r}: use K (0 is the base model), latest or all")
    k = int(text)
    if k not in have:
        raise UserError(
            f"checkpoint {k} outside run {ctx.layout.run_id!r}: its finished checkpoints are "
            f"{have[0]} … {have[-1]} (0 is the base model)"
        )
    return [k]


def finished_after_gap(ctx: RunContext, gap: int) -> list[int]:
    """Finished checkpoints after the unfinished or missing checkpoint `gap` (none while training
    is only in progress: then nothing exists after the checkpoint being written)."""
    from tpgrpo.report.runs import checkpoint_or_none

    later = [k for k in ctx.layout.list_checkpoints() if k > gap]
    return [k for k in later if checkpoint_or_none(ctx.layout.checkpoint(k), ctx.storage_options)]


def run_evaluation(
    ctx: RunContext,
    *,
    checkpoint: str | None = None,
    reward: str | dict[str, Any] | None = None,
    steps: int | None = None,
    prompts: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
    baseline: int | None = None,
) -> list[dict[str, Any]]:
    """Validate every argument, then run the evaluate flow.

    `baseline`: a checkpoint evaluated too (first), for paired gains over it (`report.paired`).

    Raises:
        UserError: a device this machine lacks, an unknown checkpoint, reward, step count or prompt set.
    """
    from tpgrpo.models.devices import check_model_device
    from tpgrpo.report.select import parse_reward_spec
    from tpgrpo.stages.prompts import check_prompts_for_reward
    from tpgrpo.storage import validate_key

    check_model_device(ctx.cfg)  # e.g. a GPU run evaluated on a machine without one
    checkpoints = select_checkpoints(ctx, checkpoint)
    if baseline is not None:
        checkpoints = sorted({*select_checkpoints(ctx, str(baseline)), *checkpoints})
    spec = parse_reward_spec(reward) if reward is not None else ctx.cfg.reward.spec
    # unknown names, bad parameters and a key that cannot be a folder name fail here, before sampling
    validate_key(ctx.reward_key(spec))
    n_steps = steps if steps is not None else ctx.cfg.sampling.eval_steps
    if not 1 <= n_steps <= 1000:
        raise UserError(f"--steps must be in 1 … 1000, got {n_steps}")
    if replicates < 1:
        raise UserError(f"--replicates must be at least 1, got {replicates}")
    _, rows = eval_prompts(ctx, prompts, per_task)
    problems = check_prompts_for_reward(rows, spec)
    if problems:
        raise ConfigError(problems)
    tracker = run_tracker(ctx)  # before sampling: a missing tracking package is a config error
    result: list[dict[str, Any]] = evaluate_flow(
        ctx, checkpoints, spec, n_steps, prompts, per_task, replicates, force
    )
    if tracker is not None:
        try:
            tracker.log_evals()
        except Exception as err:  # the evaluation is stored; tracking can catch up later
            print(f"tracking the evaluation failed ({err}); send it later with tpgrpo track", file=sys.stderr)
        finally:
            tracker.close()
    return result


@flow(name="tpgrpo-evaluate-run", log_prints=True, persist_result=False)
def evaluate_deployment(
    run: str,
    checkpoint: str | int = "latest",
    reward: str | dict[str, Any] | None = None,
    steps: int | None = None,
    prompts: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    root: str | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Deployment entrypoint (plain parameters): evaluate checkpoints of stored run `run`.

    `checkpoint`: K, `latest` or `all`; `reward`: None (the run's), a name, JSON text or a mapping.
    """
    from tpgrpo.cli.common import load_run

    return run_evaluation(
        load_run(run, root),
        checkpoint=str(checkpoint),
        reward=reward,
        steps=steps,
        prompts=prompts,
        per_task=per_task,
        replicates=replicates,
        force=force,
    )
