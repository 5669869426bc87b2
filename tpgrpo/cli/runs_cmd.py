"""`tpgrpo runs list|show`: stored runs with status, iterations done, last rewards, config summary."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tpgrpo.cli.common import RootOption, echo, load_run, resolve_root
from tpgrpo.cli.jsonout import JsonOption, emit, plain

app = typer.Typer(help="List stored runs, or show one in detail.", no_args_is_help=True)


def _num(value: Any, spec: str = "+.4f") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _when(stamp: Any) -> str:
    return stamp.strftime("%Y-%m-%d %H:%M") if stamp is not None else "-"


@app.command("list")
def list_runs(root: RootOption = None, as_json: JsonOption = False) -> None:
    """One line per run under the root: status, iterations done, last train/eval reward.

    A damaged run gets one line saying so and what to do; every other run is still listed, and the
    exit code is then 1. `--json`: the same as a list of objects (a damaged run has `error`)."""
    from tpgrpo.errors import TpgrpoError
    from tpgrpo.pipeline.catalog import run_info
    from tpgrpo.storage import list_runs as stored_runs
    from tpgrpo.storage.access import check_root

    base = resolve_root(root)
    check_root(base)  # a root that is a file, or S3 without credentials, is an error, not "no runs"
    rows: list[dict[str, Any]] = []
    for run_id in stored_runs(base):
        try:
            info = run_info(load_run(run_id, base))
        except TpgrpoError as err:  # one unreadable run must not hide the others
            rows.append({"run_id": run_id, "status": "damaged", "error": str(err)})
            continue
        last, ev = info.last, info.last_eval()
        rows.append(
            {
                "run_id": run_id,
                "status": info.status,
                "iterations_done": info.iterations_done,
                "iterations": info.config.iterations,
                "reward_key": info.reward_key,
                "mode": info.config.reward.mode,
                "train_reward": last.reward_final if last else None,
                "eval_score": ev.metrics.get("score") if ev else None,
                "model": info.config.model.path,
                "created": info.created,
            }
        )
    if as_json:
        emit({"root": base, "runs": rows})
    elif not rows:
        echo(f"no runs under {base} (start one with: tpgrpo train --root {base})")
    else:
        echo(_runs_table(rows))
    if any(r["status"] == "damaged" for r in rows):  # the exit code tells a script some were unreadable
        raise typer.Exit(1)


def _runs_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'RUN':<20}{'STATUS':<13}{'ITERS':>7}  {'REWARD':<12}{'MODE':<16}{'TRAIN':>10}{'EVAL':>10}"
        f"  {'MODEL':<24}{'CREATED':<16}".rstrip()
    ]
    for r in rows:
        if r["status"] == "damaged":
            lines.append(f"{r['run_id']:<20}{'damaged':<13}{'-':>7}  {r['error']}")
            continue
        iters = f"{r['iterations_done']}/{r['iterations']}"
        lines.append(
            f"{r['run_id']:<20}{r['status']:<13}{iters:>7}  {r['reward_key']:<12}{r['mode']:<16}"
            f"{_num(r['train_reward']):>10}{_num(r['eval_score']):>10}"
            f"  {r['model'][-24:]:<24}{_when(r['created'])}"
        )
    return "\n".join(lines)


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="Run id")],
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """A run in detail: config summary, per-iteration rewards and costs, rescored keys, evaluations.

    `--json`: the same with the full config, one object per iteration and per evaluation."""
    from tpgrpo.pipeline.catalog import format_windows, run_info, run_windows, stage_reached
    from tpgrpo.pipeline.summary import config_summary
    from tpgrpo.storage import read_run_record

    ctx = load_run(run_id, root)
    info = run_info(ctx)
    cfg = info.config
    stored = read_run_record(ctx.layout) or {}
    window = format_windows(run_windows(ctx), cfg)
    estimators = _stored_estimators(ctx, info)
    summary: dict[str, str] = {}
    for name, text in config_summary(cfg, window, info.reward_key).items():
        summary[name] = text
        if name == "rollout":  # issue 18: how the step rewards were estimated, per stored iteration
            b = cfg.branch
            summary["branch"] = (
                f"estimator {_estimators(b.estimator_label, estimators)}, completions {b.completions}, "
                f"reuse rollout velocity {b.reuse_rollout_velocity}"
            )
    holder = info.holder
    others = {i: [k for k in keys if k != info.reward_key] for i, keys in info.reward_keys.items()}
    rescored = {i: keys for i, keys in others.items() if keys}
    if as_json:
        emit(
            {
                "run_id": info.run_id,
                "run_dir": ctx.layout.run_dir,
                "status": info.status,
                "holder": holder,
                "iterations_done": info.iterations_done,
                "created": info.created,
                "code_version": stored.get("code_version"),
                "reward_key": info.reward_key,
                "window": window,
                "branch_estimators": estimators,
                "config": cfg,
                "iterations": [{**plain(r), "reached": stage_reached(r)} for r in info.iterations],
                "rescored": rescored,
                "evals": info.evals,
            }
        )
        return
    status = info.status + (f" (pid {holder.get('pid')} on {holder.get('host')})" if holder else "")
    lines = [
        f"run        {info.run_id}  ({ctx.layout.run_dir})",
        f"status     {status}, {info.iterations_done}/{cfg.iterations} iterations done",
        f"created    {_when(info.created)}  code {stored.get('code_version', '-')}",
        *(f"{name:<10} {text}" for name, text in summary.items()),
        "",
        f"{'iter':>4}  {'reached':<12}{'reward_0':>10}{'reward_W':>10}{'tps':>6}{'kept':>6}{'loss':>11}"
        f"{'evals':>8}{'compute_s':>11}  finished",
    ]
    for r in info.iterations:
        lines.append(
            f"{r.iteration:>4}  {stage_reached(r):<12}{_num(r.reward_initial):>10}{_num(r.reward_final):>10}"
            f"{r.turning_points if r.turning_points is not None else '-':>6}"
            f"{r.kept if r.kept is not None else '-':>6}{_num(r.loss, '+.3e'):>11}"
            f"{r.model_evals:>8}{r.compute_s:>11.1f}  {_when(r.finished)}"
        )
    if not info.iterations:
        lines.append("   (no iterations yet)")
    lines.append("")
    if rescored:
        lines.append("rescored   " + "; ".join(f"iteration {i}: {', '.join(k)}" for i, k in rescored.items()))
    else:
        lines.append("rescored   none")
    lines.append("")
    if info.evals:
        lines.append(f"{'eval':<22}{'reward':<14}{'steps':>6}{'images':>8}{'score':>10}{'strict':>8}")
        for e in info.evals:
            lines.append(
                f"{e.name:<22}{e.reward_key:<14}{e.steps if e.steps is not None else '-':>6}{e.rows:>8}"
                f"{_num(e.metrics.get('score')):>10}{_num(e.metrics.get('strict'), '.3f'):>8}"
            )
    else:
        lines.append(f"evaluations none (run: tpgrpo evaluate --run {info.run_id})")
    echo("\n".join(lines))


def _stored_estimators(ctx: Any, info: Any) -> dict[int, str]:
    """Iteration -> the estimator its finished branches manifest records (issue 18; manifests
    written before it record none: `exact`)."""
    from tpgrpo.pipeline.catalog import manifest_or_none

    stored = {}
    for r in info.iterations:
        m = manifest_or_none(ctx.layout.branches(r.iteration), ctx.storage_options)
        if m is not None:
            stored[r.iteration] = str(m.metrics.get("estimator", "exact"))
    return stored


def _estimators(own: str, stored: dict[int, str]) -> str:
    """The config's estimator, and the stored ones where they differ."""
    other = {i: e for i, e in stored.items() if e != own}
    if not other:
        return own
    return own + " (stored: " + ", ".join(f"iteration {i}: {e}" for i, e in other.items()) + ")"


@app.command("invalidate")
def invalidate(
    run_id: Annotated[str, typer.Argument(help="Run id")],
    start: Annotated[int, typer.Option("--from", min=0, help="First iteration whose outputs are cleared")],
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Keep iteration --from's outputs up to this stage (rollout | branch | score | annotate) "
            "[default: clear the whole iteration]",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Remove them (without it: only list them)")] = False,
    root: RootOption = None,
) -> None:
    """Clear what was built from a rebuilt input that differs: iteration --from on, later checkpoints
    and their evaluations. `tpgrpo train` then rebuilds them. Without --yes, only lists them."""
    from tpgrpo.errors import UserError
    from tpgrpo.pipeline.catalog import checkpoint_or_none, config_reward_key
    from tpgrpo.storage.invalidate import invalidate as remove
    from tpgrpo.storage.invalidate import plan_invalidation
    from tpgrpo.storage.lock import run_lock

    ctx = load_run(run_id, root)
    layout = ctx.layout
    if checkpoint_or_none(layout.checkpoint(start), ctx.storage_options) is None:
        raise UserError(
            f"checkpoint {start} of run {run_id!r} is not finished: iteration {start} has nothing to be "
            "rebuilt from; pick an earlier --from"
        )
    targets = plan_invalidation(layout, start, after, config_reward_key(ctx))
    prefix = layout.run_dir.rstrip("/") + "/"
    if not targets:
        where = f"stage {after} of iteration {start}" if after else f"iteration {start}"
        echo(f"run {run_id}: nothing stored from {where} on")
        return
    if not yes:
        echo(f"run {run_id}: would remove {len(targets)} folder(s):")
        for uri in targets:
            echo(f"  {uri.removeprefix(prefix)}")
        echo("rerun with --yes to remove them; then train again to rebuild them")
        return
    with run_lock(layout.lock(), ctx.storage_options):  # never under a running train
        remove(layout, targets)
    for uri in targets:
        echo(f"removed {uri.removeprefix(prefix)}")
    echo(f"run {run_id}: invalidated from iteration {start}; run the same tpgrpo train command to rebuild")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


@app.command("rm")
def rm(
    run_id: Annotated[str, typer.Argument(help="Run id")],
    yes: Annotated[bool, typer.Option("--yes", help="Remove without asking")] = False,
    root: RootOption = None,
) -> None:
    """Delete a run and everything stored for it (datasets, checkpoints, evaluations).

    Refused while the run is being trained or rescored (its lock is live). Asks for confirmation
    unless --yes; without a terminal to ask on, --yes is required. Also removes the remains of an
    interrupted `runs rm` (a folder without run.json)."""
    from tpgrpo.errors import UserError
    from tpgrpo.storage import RunLayout, list_runs
    from tpgrpo.storage.access import check_root
    from tpgrpo.storage.cleanup import remove_run, run_files
    from tpgrpo.storage.lock import lease_holder

    base = resolve_root(root)
    check_root(base)
    layout = RunLayout(base, run_id)
    stored = run_files(layout)
    if stored is None:
        known = ", ".join(list_runs(base)) or "none"
        raise UserError(f"unknown run {run_id!r} under {base} (runs there: {known})")
    holder = lease_holder(layout.lock())
    if holder is not None:
        raise UserError(
            f"run {run_id!r} is in use (locked by pid {holder.get('pid')} on {holder.get('host')}); stop "
            "that train or rescore first, then remove it"
        )
    kind = "run" if stored.is_run else "the remains of run"
    what = f"{kind} {run_id} ({stored.files} files, {_size(stored.bytes)})"
    if not yes:
        import sys

        if not sys.stdin.isatty():
            raise UserError(f"would remove {what} at {layout.run_dir}; pass --yes to remove it")
        if not typer.confirm(f"remove {what} at {layout.run_dir}?"):
            echo("nothing removed")
            raise typer.Exit(1)
    remove_run(layout)
    echo(f"removed {what}")


@app.command("gc")
def gc(
    run_id: Annotated[
        str | None, typer.Option("--run", help="Only this run [default: every run under the root]")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the debris, remove nothing")] = False,
    root: RootOption = None,
) -> None:
    """Remove the debris of crashed stages: dataset and checkpoint folders without a manifest, and
    the temp files of interrupted writes. Runs being trained or rescored are skipped (their
    unfinished outputs are work in progress). The stages redo debris anyway; gc frees its space."""
    from tpgrpo.errors import RunLockedError, UserError
    from tpgrpo.storage import RunLayout, list_runs
    from tpgrpo.storage.access import check_root
    from tpgrpo.storage.cleanup import collect_debris, find_debris
    from tpgrpo.storage.lock import lease_holder

    base = resolve_root(root)
    check_root(base)
    ids = list_runs(base)
    if run_id is not None:
        if run_id not in ids:
            raise UserError(f"unknown run {run_id!r} under {base} (runs there: {', '.join(ids) or 'none'})")
        ids = [run_id]
    total_items = total_bytes = 0
    busy: list[str] = []
    for rid in ids:
        layout = RunLayout(base, rid)
        if lease_holder(layout.lock()) is not None:
            busy.append(rid)
            continue
        try:
            debris = find_debris(layout) if dry_run else collect_debris(layout)
        except RunLockedError:  # a train started after the check above
            busy.append(rid)
            continue
        prefix = layout.run_dir.rstrip("/") + "/"
        verb = "would remove" if dry_run else "removed"
        for item in debris:
            size = f"{item.files} files, {_size(item.bytes)}"
            echo(f"{verb} {rid}/{item.uri.removeprefix(prefix)} ({item.kind}, {size})")
        total_items += len(debris)
        total_bytes += sum(item.bytes for item in debris)
    verb = "would remove" if dry_run else "removed"
    echo(f"gc: {verb} {total_items} item(s), {_size(total_bytes)}, from {len(ids) - len(busy)} run(s)")
    if busy:
        echo(f"skipped (being trained or rescored): {', '.join(busy)}; run gc again once they stop")


@app.command("compare")
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids")],
    out: Annotated[
        str | None, typer.Option("--out", help="Output folder [default: ./compare-<first>-<last>]")
    ] = None,
    root: RootOption = None,
) -> None:
    """Runs side by side: reward, evaluation and turning-point curves overlaid against iterations,
    model evaluations and wall-clock (PNG, and one self-contained HTML page), and a table of each
    run's final figures (printed too)."""
    from tpgrpo.cli.common import check_output_dir
    from tpgrpo.errors import UserError
    from tpgrpo.report.compare import compare_runs, format_figures

    if len(run_ids) < 2:
        raise UserError("runs compare needs two or more run ids, e.g. tpgrpo runs compare demo demo-2")
    if len(set(run_ids)) != len(run_ids):
        raise UserError(f"run ids repeat in {' '.join(run_ids)}; name each run once")
    target = out or f"./compare-{run_ids[0]}-{run_ids[-1]}"
    check_output_dir(target, "--out")
    contexts = [load_run(run_id, root) for run_id in run_ids]  # every id checked before any work
    files, figures = compare_runs(contexts, target)
    echo(format_figures(figures))
    for image in files.images:
        echo(f"png:  {image}")
    echo(f"html: {files.html}")
