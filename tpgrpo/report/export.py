"""`tpgrpo export lora`: a checkpoint's LoRA as a folder other tools load, with a model card.

The folder holds one safetensors file in the layout of `tpgrpo.models.export` (diffusers' key
names, alpha / r folded into lora_B) and `README.md`, a model card: where the weights come from
(run, checkpoint, EMA or live weights, base model, reward and mode, rank and alpha), the stored
evaluations of that checkpoint, and how to load it.

| format | weights file | loaded by |
|---|---|---|
| `diffusers` | `pytorch_lora_weights.safetensors` (the name diffusers looks for) | `load_lora_weights(DIR)` |
| `comfyui` | `<run>-iter<K>-<weights>.safetensors` (tells files apart in a loras folder) | ComfyUI's nodes |

The two formats hold the same tensors: ComfyUI reads diffusers' layout for SD3 and FLUX
(`transformer.` + the diffusers module name, `lora_A` / `lora_B`, scale 1 without an alpha entry).

Nothing partial is ever left at `--out`: the files are written into a hidden folder beside it,
which is renamed into place at the end (a previous export it replaces, with `force`, is moved
aside first and deleted after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpgrpo.errors import UserError

if TYPE_CHECKING:
    from tpgrpo.pipeline.context import RunContext

FORMATS = ("diffusers", "comfyui")
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
CARD = "README.md"

PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


def check_export_options(weights: str, fmt: str) -> None:
    """`--weights` and `--format`, checked before any work.

    Raises:
        UserError: an unknown choice (the message lists the valid ones).
    """
    from tpgrpo.models.export import WEIGHTS

    if weights not in WEIGHTS:
        raise UserError(
            f"unknown --weights {weights!r}; choose ema (the EMA weights evaluate samples with) or live "
            "(the optimizer's last weights)"
        )
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _is_export_file(path: Path) -> bool:
    """A file an export writes: the model card or a safetensors file."""
    return path.is_file() and (path.name == CARD or path.name.endswith(".safetensors"))


def _is_previous_export(folder: Path) -> bool:
    """Whether `folder` holds only what an export writes."""
    return all(_is_export_file(p) for p in folder.iterdir())


def check_export_dir(out: Path, force: bool) -> None:
    """`--out`: missing or empty, or (with `force`) a previous export to replace.

    Raises:
        UserError: `out` is a file, or a non-empty folder without `force`, or with `force` a folder
            holding anything an export does not write (it is never deleted).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder to write the LoRA into")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(
            f"--out {str(out)!r} exists and is not empty; pick a new folder, or pass --force to replace "
            "a previous export there"
        )
    if not _is_previous_export(out):
        stray = sorted(p.name for p in out.iterdir() if not _is_export_file(p))
        raise UserError(
            f"--out {str(out)!r} holds other things than a previous export ({', '.join(stray[:3])}); "
            "--force only replaces a folder holding README.md and .safetensors files: pick another folder"
        )


def weights_file(fmt: str, run_id: str, checkpoint: int, weights: str) -> str:
    """The weights file's name in the export folder (see the module's table)."""
    return DIFFUSERS_FILE if fmt == "diffusers" else f"{run_id}-iter{checkpoint:04d}-{weights}.safetensors"


def pick_checkpoint(ctx: RunContext, text: str | None) -> int:
    """`--checkpoint`: K or `latest` (default), a finished checkpoint with trained weights.

    Raises:
        UserError: `all`, bad syntax, an unknown checkpoint, or checkpoint 0 (the base model).
    """
    from tpgrpo.pipeline.select import select_checkpoints

    if text is not None and text.strip() == "all":
        raise UserError("--checkpoint all: export writes one LoRA; give K (a checkpoint number) or latest")
    (k,) = select_checkpoints(ctx, text)
    if k == 0:
        run = ctx.layout.run_id
        if text is None or text == "latest":
            raise UserError(
                f"run {run!r} has no trained checkpoint yet (only checkpoint 0, the base model); "
                "train it first (tpgrpo train)"
            )
        raise UserError(
            "checkpoint 0 is the base model: its LoRA is the identity (lora_B = 0), nothing to export; "
            "give a trained checkpoint (1 or later) or latest"
        )
    return k


@dataclass(frozen=True)
class LoraExport:
    """What `build_export` made: the folder's files and what the command reports."""

    run_id: str
    checkpoint: int
    weights: str
    fmt: str
    family: str
    rank: int
    alpha: float
    base_model: str
    files: dict[str, bytes]

    @property
    def weights_name(self) -> str:
        return next(name for name in self.files if name.endswith(".safetensors"))


def build_export(ctx: RunContext, *, checkpoint: str | None, weights: str, fmt: str) -> LoraExport:
    """Read checkpoint `checkpoint` of the run, convert its LoRA and write its model card (in memory).

    Raises:
        UserError: bad options or checkpoint; `DataError`: a damaged checkpoint.
    """
    from tpgrpo.models.export import checkpoint_state, exported_bytes, to_diffusers
    from tpgrpo.storage.blobs import read_blobs

    check_export_options(weights, fmt)
    k = pick_checkpoint(ctx, checkpoint)
    manifest, blobs = read_blobs(ctx.layout.checkpoint(k), ctx.storage_options)
    state, spec = checkpoint_state(blobs, weights)
    provenance = {
        "run": ctx.layout.run_id,
        "checkpoint": k,
        "checkpoint_hash": manifest.hash,
        "weights": weights,
        "family": spec.family,
        "transformer": spec.transformer,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "scale_folded_into_lora_B": spec.alpha / spec.rank,
    }
    data = exported_bytes(to_diffusers(state, spec), provenance)
    name = weights_file(fmt, ctx.layout.run_id, k, weights)
    card = model_card(ctx, k, weights, fmt, spec, manifest, name, hashlib.sha256(data).hexdigest())
    return LoraExport(
        run_id=ctx.layout.run_id,
        checkpoint=k,
        weights=weights,
        fmt=fmt,
        family=spec.family,
        rank=spec.rank,
        alpha=spec.alpha,
        base_model=_base_model(ctx.cfg.model.path)[1],
        files={name: data, CARD: card.encode()},
    )


def _base_model(path: str) -> tuple[str, str]:
    """(the config's `model.path`, what `from_pretrained` takes: the packaged folder for embedded)."""
    from tpgrpo.models.factory import resolve_model_path

    try:
        return path, resolve_model_path(path)
    except UserError:  # the embedded checkpoint is not installed here: name the config's value
        return path, path


def _fmt(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _evaluations(ctx: RunContext, k: int, weights: str) -> list[str]:
    """The model card's evaluation section: every finished eval dataset of checkpoint `k`."""
    from tpgrpo.pipeline.catalog import eval_records

    found = [e for e in eval_records(ctx) if e.checkpoint == k]
    run = ctx.layout.run_id
    if not found:
        return [
            f"No evaluation of checkpoint {k} is stored. `tpgrpo evaluate --run {run} --checkpoint {k}` "
            "makes one (EMA weights, held-out prompts); export again afterwards to have it here.",
        ]
    lines = [
        f"From `tpgrpo evaluate` (stored under `eval/` of the run). Evaluation samples with the "
        f"**EMA** weights{'' if weights == 'ema' else ', not the live weights exported here'}; "
        "score is the reward's mean, strict the share of images the reward counts as fully right "
        "(`-` for a reward without a strict verdict).",
        "",
        "| evaluation | reward | ODE steps | images | score | strict | task mean strict |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in found:
        m = e.metrics
        lines.append(
            f"| `{e.name}` | {e.reward_key} | {e.steps if e.steps is not None else '-'} | {e.rows} | "
            f"{_fmt(m.get('score'))} | {_fmt(m.get('strict'), '.3f')} | "
            f"{_fmt(m.get('task_mean_strict'), '.3f')} |"
        )
    for e in found:
        tasks = sorted({key.split(".")[1] for key in e.metrics if key.startswith("task.")})
        if not tasks:
            continue
        lines += ["", f"Per task, `{e.name}` / {e.reward_key}:", ""]
        lines += ["| task | n | score | strict |", "|---|---|---|---|"]
        for t in tasks:
            m = e.metrics
            lines.append(
                f"| {t} | {_fmt(m.get(f'task.{t}.n'), 'g')} | {_fmt(m.get(f'task.{t}.score'))} | "
                f"{_fmt(m.get(f'task.{t}.strict'), '.3f')} |"
            )
    return lines


def model_card(
    ctx: RunContext,
    k: int,
    weights: str,
    fmt: str,
    spec: Any,
    manifest: Any,
    file_name: str,
    sha256: str,
) -> str:
    """The export's `README.md` (Markdown with a Hugging Face metadata header)."""
    from tpgrpo.pipeline.catalog import config_reward_key

    cfg, run = ctx.cfg, ctx.layout.run_id
    configured, base = _base_model(cfg.model.path)
    pipeline = PIPELINES[spec.family]
    scale = spec.alpha / spec.rank
    spec_value = cfg.reward.spec
    reward = spec_value if isinstance(spec_value, str) else json.dumps(spec_value, sort_keys=True)
    base_text = f"`{configured}`"
    if base != configured:
        base_text += f" (`{base}` on the machine that exported it)"
    which = (
        "EMA of the LoRA weights (what `tpgrpo evaluate` samples with)"
        if weights == "ema"
        else "live LoRA weights (the optimizer's, what the next iteration's rollouts sample with)"
    )
    s, m = cfg.sampling, cfg.model
    weight_arg = "" if fmt == "diffusers" else f', weight_name="{file_name}"'
    lines = [
        "---",
        "library_name: diffusers",
        f"tags: [lora, text-to-image, tpgrpo, {spec.family}]",
        "---",
        "",
        f"# LoRA of tpgrpo run `{run}`, checkpoint {k} ({weights} weights)",
        "",
        "A LoRA adapter of the denoising transformer, fine-tuned with TP-GRPO (reinforcement learning "
        "on a flow-matching text-to-image model) by tpgrpo, exported with "
        f"`tpgrpo export lora --run {run} --checkpoint {k} --weights {weights} --format {fmt}`.",
        "",
        "| | |",
        "|---|---|",
        f"| run | `{run}` |",
        f"| checkpoint | {k} (`checkpoints/iter={k:04d}`: after {k} training "
        f"iteration{'s' if k != 1 else ''}; hash `{manifest.hash[:16]}`) |",
        f"| weights | {weights}: {which} |",
        f"| base model | {base_text}, a `{pipeline}` ({spec.transformer}) |",
        f"| reward | `{reward}` (key `{config_reward_key(ctx)}`) |",
        f"| reward mode | `{cfg.reward.mode}` |",
        f"| LoRA | rank {spec.rank}, alpha {spec.alpha:g}, on {', '.join(f'`{t}`' for t in spec.targets)} |",
        f"| file | `{file_name}`, float32, sha256 `{sha256}` |",
        "",
        "## Strength",
        "",
        f"The scale alpha / rank = {spec.alpha:g} / {spec.rank} = {scale:g} is **folded into the "
        "weights** (`lora_B` is stored multiplied by it) and the file has no alpha entries, so a loader "
        "applies the adapter at strength 1.0 exactly as tpgrpo did, whether it reads alpha or not. A "
        "strength other than 1.0 scales the trained update.",
        "",
        "## Evaluation",
        "",
        *_evaluations(ctx, k, weights),
        "",
        "## Use with diffusers",
        "",
        "```python",
        "import torch",
        f"from diffusers import {pipeline}",
        "",
        f'pipe = {pipeline}.from_pretrained("{base}", dtype=torch.{m.dtype})',
        f'pipe.load_lora_weights("path/to/this/folder"{weight_arg})',
        "image = pipe(",
        '    "a photo of a red circle",',
        f"    num_inference_steps={s.eval_steps},",
        f"    guidance_scale={s.guidance_scale:g},",
        f"    height={m.height},",
        f"    width={m.width},",
        f"    max_sequence_length={m.max_sequence_length},",
        "    generator=torch.Generator().manual_seed(0),",
        ").images[0]",
        "```",
        "",
        "These are the run's evaluation settings (`sampling.eval_steps`, `sampling.guidance_scale`, "
        "`model.height` / `width` / `max_sequence_length`)"
        + (
            ", and the guidance scale goes to FLUX's guidance embedding."
            if spec.family == "flux"
            else "; the guidance is classifier-free with an empty negative prompt, as tpgrpo samples."
        ),
        "",
        "An image of `tpgrpo evaluate` is reproduced by its prompt and the `seed` column of its eval "
        "row, one prompt per call with `generator=torch.Generator().manual_seed(seed)`: tpgrpo draws "
        "its initial noise the same way (equal up to the uint8 rounding of the stored PNG on the same "
        "device and dtype).",
    ]
    if fmt == "comfyui":
        lines += [
            "",
            "## Use with ComfyUI",
            "",
            f"Copy `{file_name}` into `ComfyUI/models/loras/` and apply it to the same base model with a "
            "`LoraLoaderModelOnly` (or `LoraLoader`) node at strength 1.0. The keys are diffusers' "
            "(`transformer.<module>.lora_A.weight` / `.lora_B.weight`), which ComfyUI maps onto its "
            f"{'SD3' if spec.family == 'sd3' else 'FLUX'} weights; with no alpha entries it applies scale "
            "1, matching the folded weights.",
        ]
    return "\n".join(lines) + "\n"


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_export(out: Path, files: Mapping[str, bytes], *, force: bool) -> None:
    """Write `files` as the folder `out`, all or nothing.

    The files go into a hidden folder beside `out` (`.NAME.partial-XXXX`), renamed onto `out` at
    the end (onto a missing or empty `out` in one `rename`; a previous export, with `force`, is
    moved aside first and deleted once the new one is in place). A failure removes the hidden
    folder and leaves `out` as it was.

    Raises:
        UserError: `out` is not writable as asked (`check_export_dir`).
    """
    out = out.resolve()  # `--out .` names its folder through the parent, like any other path
    check_export_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    partial = out.parent / f".{out.name}.partial-{tag}"
    partial.mkdir()
    try:
        for name, data in sorted(files.items()):
            _write_file(partial / name, data)
        if out.is_dir() and any(out.iterdir()):
            replaced = out.parent / f".{out.name}.replaced-{tag}"
            out.rename(replaced)
            try:
                partial.rename(out)
            except BaseException:
                replaced.rename(out)
                raise
            shutil.rmtree(replaced)
        else:
            os.replace(partial, out)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
