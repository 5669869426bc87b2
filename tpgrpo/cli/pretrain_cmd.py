"""`tpgrpo pretrain run|evaluate`: build the embedded tiny checkpoint, and measure it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tpgrpo.cli.common import echo
from tpgrpo.cli.ops_cmd import format_eval

app = typer.Typer(help="Pretrain the embedded tiny SD3 checkpoint and measure it.", no_args_is_help=True)

DEFAULT_OUT = "./pretrain-work/checkpoint"  # never into the installed package


@app.command("run")
def run(
    out: Annotated[
        str,
        typer.Option(
            help="Where to save the pipeline (save_pretrained); to replace the embedded checkpoint of a "
            "source checkout, tpgrpo/world/checkpoint"
        ),
    ] = DEFAULT_OUT,
    work: Annotated[str, typer.Option(help="State folder for resuming")] = "./pretrain-work",
    seed: Annotated[int, typer.Option(help="Seed of initialisation, data and noise")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Transformer steps (batch 64)")] = 8000,
    vae_steps: Annotated[int, typer.Option(min=1, help="VAE steps (batch 32)")] = 1500,
) -> None:
    """Pretrain the tiny pipeline on the synthetic world (resumable: rerun to continue)."""
    from tpgrpo.flows.pretrain import pretrain_flow
    from tpgrpo.world.pretrain import PretrainConfig

    cfg = PretrainConfig(seed=seed, steps=steps, vae_steps=vae_steps)
    record = pretrain_flow(out, work, cfg)
    echo(f"saved the pretrained pipeline to {out} (train on it with --set model.path={out})")
    echo(json.dumps(record["vae_latents"]))


@app.command("evaluate")
def evaluate(
    model: Annotated[str, typer.Option(help="Pipeline directory or embedded:tiny")] = "embedded:tiny",
    steps: Annotated[list[int] | None, typer.Option("--steps", help="ODE steps (repeatable)")] = None,
    replicates: Annotated[int, typer.Option(min=1, help="Seeds per held-out prompt")] = 4,
    guidance: Annotated[float, typer.Option(help="CFG scale")] = 4.5,
    seed: Annotated[int, typer.Option(help="Evaluation seed")] = 0,
    out: Annotated[str | None, typer.Option(help="Write the summary JSON here")] = None,
    grid: Annotated[str | None, typer.Option(help="Write a PNG grid of samples per task here")] = None,
) -> None:
    """GenEval-style accuracy of a checkpoint on the held-out prompts (ODE sampling, shapes reward)."""
    from tpgrpo.config import ModelConfig
    from tpgrpo.models.factory import load_policy
    from tpgrpo.report.images import task_grid
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.evaluate import evaluate as run_eval
    from tpgrpo.world.prompts import load_prompts

    policy = load_policy(ModelConfig(path=model))
    reward = make_reward("shapes")
    prompts = [r.to_row() for r in load_prompts("test")]
    results = {}
    for n in steps or [10, 40]:
        res = run_eval(
            policy,
            reward,
            prompts,
            checkpoint="base",
            replicates=replicates,
            seed=seed,
            num_steps=n,
            guidance_scale=guidance,
            height=64,
            width=64,
            batch=32,
        )
        results[n] = res["summary"]
        echo(format_eval(f"{model}, {n} ODE steps, {res['summary']['n']} images", res["summary"]))
        if grid and n == max(steps or [10, 40]):
            task_grid(policy, prompts, grid, num_steps=n, guidance_scale=guidance, seed=seed)
    if out:
        Path(out).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
