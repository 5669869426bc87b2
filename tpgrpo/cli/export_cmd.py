"""`tpgrpo export lora`: a trained checkpoint's LoRA as a folder diffusers or ComfyUI loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tpgrpo.cli.common import RootOption, RunOption, check_output_dir, echo, load_run

app = typer.Typer(help="Export trained weights for use outside tpgrpo.", no_args_is_help=True)


@app.command("lora")
def lora(
    run: RunOption,
    out: Annotated[
        str, typer.Option("--out", help="Folder to write (created; must be new or empty unless --force)")
    ],
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", help="Checkpoint K (1 or later) or latest (the default)"),
    ] = None,
    weights: Annotated[
        str,
        typer.Option("--weights", help="ema (what evaluate samples with) or live (the optimizer's weights)"),
    ] = "ema",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="diffusers (pytorch_lora_weights.safetensors for load_lora_weights) or comfyui "
            "(<run>-iter<K>-<weights>.safetensors for ComfyUI/models/loras)",
        ),
    ] = "diffusers",
    force: Annotated[
        bool, typer.Option("--force", help="Replace a previous export in --out (README.md, .safetensors)")
    ] = False,
    root: RootOption = None,
) -> None:
    """Export a checkpoint's LoRA in diffusers' layout, with a model card (README.md).

    The scale alpha / rank is folded into the weights, so any loader applies exactly the trained
    update at strength 1.0. The folder appears whole or not at all.
    """
    from tpgrpo.report.export import build_export, check_export_dir, check_export_options, write_export

    check_export_options(weights, fmt)
    check_output_dir(out, "--out")
    target = Path(out).expanduser()
    check_export_dir(target, force)
    ctx = load_run(run, root)
    export = build_export(ctx, checkpoint=checkpoint, weights=weights, fmt=fmt)
    write_export(target, export.files, force=force)
    echo(
        f"exported run {export.run_id} checkpoint {export.checkpoint} ({export.weights} weights, LoRA rank "
        f"{export.rank}, alpha {export.alpha:g}: scale {export.alpha / export.rank:g} folded into lora_B) "
        f"as {export.fmt}:"
    )
    for name in sorted(export.files):
        echo(f"  {target / name}")
    if export.fmt == "diffusers":
        echo(f'load it: <Pipeline>.from_pretrained("{export.base_model}").load_lora_weights("{target}")')
    else:
        echo(f"use it: copy {export.weights_name} into ComfyUI/models/loras/ (strength 1.0)")
