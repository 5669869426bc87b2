"""A checkpoint's evaluation as plain functions: prompts, names, the dataset and its summary.

`flows.evaluate` runs `evaluate_checkpoint` as a Prefect task per checkpoint; see that module for
what an evaluation is and how it is kept idempotent.
"""

from __future__ import annotations

from typing import Any

from tpgrpo.config import SpecData
from tpgrpo.errors import UserError
from tpgrpo.pipeline.context import Log, RunContext
from tpgrpo.pipeline.lineage import eval_config_hashes
from tpgrpo.pipeline.plan import kept_config_hash
from tpgrpo.storage import finalize_dataset, prepare_output, read_manifest, read_table


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


def flat_metrics(summary: dict[str, Any], steps: int, replicates: int, source: str) -> dict[str, Any]:
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
    spec: SpecData,
    *,
    steps: int,
    prompt_source: str | None = None,
    per_task: int | None = None,
    replicates: int = 1,
    force: bool = False,
    log: Log | None = None,
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
    accepted = eval_config_hashes(
        cfg, spec if spec is not None else cfg.reward.spec, steps, replicates, prompts
    )
    chash = kept_config_hash(ctx, out, accepted)
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
            metrics=flat_metrics(result["summary"], steps, replicates, source),
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
