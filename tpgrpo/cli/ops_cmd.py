"""`tpgrpo rescore`, `tpgrpo annotate`, `tpgrpo evaluate`: work on a stored run, no new rollouts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from tpgrpo.cli.common import RootOption, RunOption, echo, load_run
from tpgrpo.cli.jsonout import JsonOption, emit, plain
from tpgrpo.config import MODES

_MODES = " | ".join(MODES)

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.report.paired import PairedGain

ItersOption = Annotated[
    str | None,
    typer.Option("--iters", help="Iterations: K, A:B (A … B−1), A: or :B [default: all stored]"),
]
ModeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--mode",
        help=f"Reward mode: {_MODES} | all (repeatable) [default: the run's]",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace finished outputs built from other inputs or settings")
]


def _fmt(value: Any, spec: str = "+.4f") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def rescore(
    run: RunOption,
    reward: Annotated[
        str,
        typer.Option(
            "--reward",
            help="Reward: a registered name (jpeg) or JSON "
            """('{"name": "jpeg", "quality": 50, "key": "jpeg_q50"}')""",
        ),
    ],
    iters: ItersOption = None,
    mode: ModeOption = None,
    force: ForceOption = False,
    root: RootOption = None,
) -> None:
    """Score a run's stored branch images with another reward into rewards/<key>, then re-annotate.

    Nothing is generated and the run's own datasets are only read. Finished outputs are skipped.
    """
    from tpgrpo.cli.console import quiet_expected_failures
    from tpgrpo.flows.rescore import rescore as run_rescore
    from tpgrpo.flows.server import temporary_server
    from tpgrpo.pipeline.catalog import config_reward_key, manifest_or_none
    from tpgrpo.pipeline.select import skipped_error

    quiet_expected_failures()
    ctx = load_run(run, root)
    with temporary_server():  # dies with this process, even under kill -9
        result = run_rescore(ctx, reward, iters=iters, modes=mode, force=force)
    key, own = result["reward_key"], config_reward_key(ctx)
    echo(f"rescored run {run} with reward {key} (run reward: {own})")
    echo(f"{'iter':>4}  {'mode':<15}{'score':>10}{f'{own} final':>16}{'final':>10}{'tps':>6}{'kept':>6}")
    for i, rec in sorted(result["iterations"].items()):
        base = manifest_or_none(ctx.layout.annotations(i, own, ctx.cfg.reward.mode), ctx.storage_options)
        own_final = base.metrics.get("reward_final_mean") if base is not None else None
        for m, ann in rec["annotations"].items():
            echo(
                f"{i:>4}  {m:<15}{_fmt(rec['score']['metrics'].get('score_mean')):>10}{_fmt(own_final):>16}"
                f"{_fmt(ann.get('reward_final_mean')):>10}{ann.get('turning_points', 0):>6}"
                f"{ann.get('kept', 0):>6}"
            )
    echo(f"scores:      {ctx.layout.run_dir}/iter=NNNN/rewards/{key}")
    echo(f"annotations: {ctx.layout.run_dir}/iter=NNNN/annotations/{key}/<mode>")
    _fail_on_skips(run, result["skipped"], sorted(result["iterations"]), skipped_error)


def _fail_on_skips(run: str, skipped: dict[int, str], done: list[int], error: Any) -> None:
    """Name every skipped iteration on its own line (stderr), then fail: never a silent partial result."""
    for i, reason in sorted(skipped.items()):
        typer.echo(f"skipped iteration {i}: {reason}", err=True)
    if skipped:
        raise error(run, skipped, done)


def annotate(
    run: RunOption,
    reward: Annotated[
        str, typer.Option("--reward", help="Stored reward key (rewards/<key>) to annotate from")
    ],
    mode: Annotated[
        list[str],
        typer.Option("--mode", help=f"Reward mode, or all (repeatable): {_MODES}"),
    ],
    iters: ItersOption = None,
    aggregate: Annotated[
        str | None,
        typer.Option(
            "--aggregate",
            help="Several rewards: reward (normalise their weighted sum) or advantage (normalise each "
            "in its group, sum the advantages) [default: the run's advantage.aggregate]",
        ),
    ] = None,
    weight: Annotated[
        list[str] | None,
        typer.Option(
            "--weight",
            help="KEY=W: combine the stored reward KEY with weight W (repeatable; sets advantage.weights "
            "for this annotation, written to annotations/<--reward>/<mode>)",
        ),
    ] = None,
    force: ForceOption = False,
    root: RootOption = None,
) -> None:
    """Re-annotate stored scores with another reward mode (an ablation: seconds of CPU, no sampling),
    or combine several stored rewards (`--weight`, `--aggregate`)."""
    from tpgrpo.pipeline.catalog import usable_iterations
    from tpgrpo.pipeline.select import (
        check_modes,
        check_reward_key,
        guard_training_data,
        select_with_skips,
        skipped_error,
    )
    from tpgrpo.pipeline.steps import annotate_step
    from tpgrpo.storage.lock import run_lock

    ctx = load_run(run, root)
    modes = check_modes(mode)
    stored = sorted({k for i in ctx.layout.list_iterations() for k in ctx.layout.list_rewards(i)})
    key = check_reward_key(reward, stored, run_id=run)
    ctx = _with_advantage(ctx, aggregate, weight or [], stored)
    usable, unusable = usable_iterations(ctx, ("rollouts", "rewards"), key)
    iterations, skipped = select_with_skips(
        iters, usable, unusable, run_id=run, what=f"stored {key!r} scores"
    )
    guard_training_data(ctx, key, modes, force)
    final_only = _final_only(ctx, iterations, key, [m for m in modes if m != "flow_grpo"])
    echo(f"{'iter':>4}  {'mode':<15}{'initial':>10}{'final':>10}{'tps':>6}{'kept':>6}{'zero-adv':>10}")
    with run_lock(ctx.layout.lock(), ctx.storage_options):
        for i in iterations:
            for m in modes:
                if m != "flow_grpo" and i in final_only:
                    continue
                metrics = annotate_step(ctx, i, force, key=key, mode=m).metrics
                echo(
                    f"{i:>4}  {m:<15}{_fmt(metrics.get('reward_initial_mean')):>10}"
                    f"{_fmt(metrics.get('reward_final_mean')):>10}{metrics.get('turning_points', 0):>6}"
                    f"{metrics.get('kept', 0):>6}{metrics.get('zero_advantage_trajectories', 0):>10}"
                )
    echo(f"annotations: {ctx.layout.run_dir}/iter=NNNN/annotations/{key}/<mode>")
    _fail_on_skips(run, skipped, iterations, skipped_error)


def _final_only(ctx: Any, iterations: list[int], key: str, step_modes: list[str]) -> set[int]:
    """The selected iterations scored on final images only, which the step-level `step_modes` leave
    out (said on stderr). A run trained without completions has step-level annotations only on its
    audited iterations (`branch.audit_every`).

    Raises:
        DataError: a step-level mode has no iteration with completions to annotate.
    """
    from tpgrpo.errors import DataError
    from tpgrpo.pipeline.annotate import final_only_iterations
    from tpgrpo.pipeline.select import span

    if not step_modes:
        return set()
    final_only = final_only_iterations(ctx, iterations, key)
    if not final_only:
        return set()
    audit = ctx.cfg.branch.audit_every
    if len(final_only) == len(iterations):
        hint = (
            f"audited: iterations {audit - 1}, {2 * audit - 1}, … (branch.audit_every={audit})"
            if audit is not None
            else "train with branch.audit_every=K to complete every K-th iteration of a flow_grpo run"
        )
        raise DataError(
            f"run {ctx.layout.run_id!r}: iteration(s) {span(final_only)} scored only final images "
            f"(branch.completions=false), so mode(s) {', '.join(step_modes)} have no intermediate "
            f"rewards to annotate; {hint}"
        )
    typer.echo(
        f"{', '.join(step_modes)}: left out iteration(s) {span(final_only)}, scored on final images only "
        "(branch.completions=false; the others were audited with completions)",
        err=True,
    )
    return set(final_only)


def _with_advantage(ctx: Any, aggregate: str | None, weights: list[str], stored: list[str]) -> Any:
    """`ctx` with its config's advantage aggregation and weights replaced by `--aggregate` and
    `--weight KEY=W` (unchanged without them), validated like a config.

    Raises:
        UserError: a `--weight` is not KEY=number or names no stored reward.
        ConfigError: the resulting advantage settings are invalid.
    """
    import dataclasses

    from pydantic import ValidationError

    from tpgrpo.config import Config, _format_pydantic
    from tpgrpo.errors import ConfigError, UserError
    from tpgrpo.pipeline.select import check_reward_key

    if aggregate is None and not weights:
        return ctx
    advantage = ctx.cfg.advantage.model_dump()
    if aggregate is not None:
        advantage["aggregate"] = aggregate
    if weights:
        parsed: dict[str, float] = {}
        for text in weights:
            name, sep, value = text.partition("=")
            try:
                number = float(value) if sep else None
            except ValueError:
                number = None
            if number is None:
                raise UserError(
                    f"--weight {text!r}: expected KEY=WEIGHT with a number, e.g. --weight jpeg=0.5"
                )
            parsed[check_reward_key(name.strip(), stored, run_id=ctx.layout.run_id)] = number
        advantage["weights"] = parsed
    try:
        cfg = Config.model_validate({**ctx.cfg.model_dump(), "advantage": advantage})
    except ValidationError as err:
        raise ConfigError(_format_pydantic(err)) from None
    problems = cfg.problems()
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(ctx, cfg=cfg)


def evaluate(
    run: RunOption,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Checkpoint K (0 = base model), latest or all [default: latest]"),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="ODE steps [default: the run's sampling.eval_steps]")
    ] = None,
    reward: Annotated[
        str | None, typer.Option("--reward", help="Reward name or JSON spec [default: the run's]")
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option("--prompts", help="Prompt set: test | train | a .jsonl/.txt file [default: test]"),
    ] = None,
    per_task: Annotated[
        int | None, typer.Option("--prompts-per-task", help="Only the first N prompts of each task")
    ] = None,
    replicates: Annotated[int, typer.Option("--replicates", help="Samples (seeds) per prompt")] = 1,
    baseline: Annotated[
        int | None,
        typer.Option(
            "--baseline",
            help="Also evaluate checkpoint K (0 = base model) and print each checkpoint's paired gain "
            "over it, with a 95 % CI over prompts",
        ),
    ] = None,
    force: ForceOption = False,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate checkpoints: ODE samples of held-out prompts with the EMA weights, scored per task.

    With `--baseline K`, every image is sampled from the same noise at each checkpoint, so the gain
    over checkpoint K is a paired difference; its 95 % CI takes prompts as the independent units.
    `--json`: the evaluations (per-task summaries) and gains as one document on stdout.
    """
    from tpgrpo.cli.console import quiet_expected_failures
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.server import temporary_server

    quiet_expected_failures()
    ctx = load_run(run, root)
    with temporary_server():  # dies with this process, even under kill -9
        results = run_evaluation(
            ctx,
            checkpoint=checkpoint,
            reward=reward,
            steps=steps,
            prompts=prompts,
            per_task=per_task,
            replicates=replicates,
            force=force,
            baseline=baseline,
        )
    found = paired_gains(ctx, results, baseline) if baseline is not None else {}
    if as_json:
        emit(
            {
                "run_id": run,
                "evaluations": results,
                "baseline": baseline,
                "gains": [
                    {"checkpoint": k, "baseline": baseline, **plain(g), "excludes_zero": g.excludes_zero}
                    for k, gs in found.items()
                    for g in gs
                ],
            }
        )
        return
    for res in results:
        title = (
            f"run {run} checkpoint {res['checkpoint']} ({res['name']}), reward {res['reward_key']}, "
            f"{res['rows']} images"
        )
        echo(format_eval(title, res["summary"]))
        echo(f"eval: {res['uri']}")
    if baseline is not None:
        echo(format_gains(found, baseline))


def paired_gains(
    ctx: RunContext, results: list[dict[str, Any]], baseline: int
) -> dict[int, list[PairedGain]]:
    """Each evaluated checkpoint (but the baseline) -> its `PairedGain`s over the baseline's evaluation."""
    from tpgrpo.report.paired import gains, read_eval

    by_checkpoint = {res["checkpoint"]: res for res in results}
    base = read_eval(by_checkpoint[baseline]["uri"], ctx.storage_options)
    return {
        k: gains(base, read_eval(res["uri"], ctx.storage_options))
        for k, res in sorted(by_checkpoint.items())
        if k != baseline
    }


def format_gains(found: dict[int, list[PairedGain]], baseline: int) -> str:
    """Each checkpoint's paired gain over the baseline, one block each."""
    lines = []
    for k, gains in found.items():
        lines.append(
            f"paired gain of checkpoint {k} over checkpoint {baseline} ({gains[0].images} images, "
            f"{gains[0].prompts} prompts; 95 % CI over prompts):"
        )
        lines += [f"  {g.describe()}" for g in gains]
    return "\n".join(lines) if lines else f"only checkpoint {baseline} was evaluated: no gain to show"


def format_eval(title: str, summary: dict[str, Any]) -> str:
    """A GenEval-style table: per task n, mean score, strict accuracy ("-" where the reward has none)."""
    lines = [title, f"{'task':<15}{'n':>6}{'score':>10}{'strict':>9}"]
    for task, v in summary["tasks"].items():
        lines.append(f"{task:<15}{v['n']:>6}{v['score']:>10.4f}{_fmt(v['strict'], '.3f'):>9}")
    lines.append(
        f"{'overall':<15}{summary['n']:>6}{summary['score']:>10.4f}{_fmt(summary['strict'], '.3f'):>9}"
    )
    if summary.get("task_mean_strict") is not None:
        lines.append(f"{'task mean':<15}{'':>6}{'':>10}{summary['task_mean_strict']:>9.3f}")
    if summary.get("requirements"):
        credit = ", ".join(f"{k} {v:.3f}" for k, v in summary["requirements"].items())
        lines.append(f"requirement credit: {credit}  (color: colour accuracy)")
    if summary.get("quality"):
        lines.append("image quality: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["quality"].items()))
    return "\n".join(lines)
