"""`tpgrpo export lora` on stored runs: the folder diffusers loads, its model card, bad input.

The end-to-end tests do what a user does with the export: `StableDiffusion3Pipeline` (the SD3
`stored_run`) or `FluxPipeline` (`flux_run`, the tiny FLUX pipeline) `.from_pretrained` of the run's
base model, `load_lora_weights(DIR)`, then sample. The transformer then agrees with tpgrpo's policy
carrying the checkpoint's EMA adapter to atol 1e-5 (measured: 0.0 for SD3, whose alpha / r = 2 is
a power of two so the fold is exact; 1.2e-7 for FLUX's 6 / 4 = 1.5), and the pipeline's `__call__`
with each eval row's prompt and seed reproduces `tpgrpo evaluate`'s stored image of that
checkpoint within 2/255 (measured: 0.50/255 over the 6 images of each run, the rounding of the
stored uint8 PNG against the pipeline's float image).
"""

from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from .conftest import EVAL_STEPS, StoredRun, assert_user_error, run_cli


def _context(run: StoredRun) -> Any:
    from tpgrpo.pipeline.context import load_run

    return load_run(run.run_id, str(run.root))


def _checkpoint_policy(ctx: Any, k: int, ema: bool) -> Any:
    """A fresh policy of the run's model with checkpoint `k`'s adapter, loaded the way evaluate does."""
    from tpgrpo.models import load_policy
    from tpgrpo.models.lora import add_lora
    from tpgrpo.stages.checkpoints import load_adapter

    policy = load_policy(ctx.cfg.model)
    add_lora(policy, rank=ctx.cfg.update.lora_rank, alpha=ctx.cfg.update.lora_alpha)
    load_adapter(ctx.layout.checkpoint(k), policy, ema=ema)
    return policy


def _load_and_reproduce(run: StoredRun, out: Path, checkpoint: int, eval_steps: int) -> None:
    """What a user does with the export: `<Pipeline>.from_pretrained(base)`, `load_lora_weights(out)`.

    Then the pipeline's transformer agrees with our policy carrying the checkpoint's EMA adapter
    (atol 1e-5), and `__call__` with each eval row's prompt and seed gives `tpgrpo evaluate`'s
    stored image within 2/255.
    """
    import diffusers

    from tpgrpo.models.factory import resolve_model_path
    from tpgrpo.models.flux import FluxPolicy
    from tpgrpo.models.sd3 import SD3Policy
    from tpgrpo.pipeline.evaluate import eval_name, eval_prompts
    from tpgrpo.schemas.images import decode_png
    from tpgrpo.storage import read_table

    ctx = _context(run)
    cfg = ctx.cfg
    flux = cfg.model.family == "flux"
    pipeline = diffusers.FluxPipeline if flux else diffusers.StableDiffusion3Pipeline
    pipe = pipeline.from_pretrained(resolve_model_path(cfg.model.path))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(out))
    assert pipe.get_list_adapters() == {"transformer": ["default_0"]}

    ours = _checkpoint_policy(ctx, checkpoint, ema=True)
    theirs = (FluxPolicy if flux else SD3Policy)(pipe, max_sequence_length=cfg.model.max_sequence_length)
    c, h, w = ours.latent_shape(cfg.model.height, cfg.model.width)
    gen = torch.Generator().manual_seed(0)
    latents, sigma = torch.randn(2, c, h, w, generator=gen), torch.tensor([0.8, 0.3])  # [B, C, h, w], [B]
    cond = ours.encode(["a photo of a red circle", "a photo of two blue squares"])
    with torch.no_grad():
        torch.testing.assert_close(
            theirs.forward(latents, sigma, cond), ours.forward(latents, sigma, cond), rtol=0, atol=1e-5
        )

    name = eval_name(checkpoint, eval_steps, cfg.sampling.eval_steps)
    texts = {r["prompt_id"]: r["prompt"] for r in eval_prompts(ctx, None, 1)[1]}
    table = read_table(ctx.layout.eval(name, run.reward_key), "eval", columns=["prompt_id", "seed", "image"])
    rows = table.to_pylist()
    assert len(rows) == 6  # one prompt per task (evaluated with --prompts-per-task 1)
    for row in rows:
        image = pipe(
            prompt=texts[row["prompt_id"]],
            num_inference_steps=eval_steps,
            guidance_scale=cfg.sampling.guidance_scale,
            height=cfg.model.height,
            width=cfg.model.width,
            max_sequence_length=cfg.model.max_sequence_length,
            generator=torch.Generator().manual_seed(row["seed"]),
            output_type="np",
        ).images[0]  # [H, W, 3] float in [0, 1]
        stored = decode_png(row["image"]).astype(np.float64)  # [H, W, 3] uint8
        diff = np.abs(image * 255.0 - stored).max()
        assert diff <= 2.0, (
            f"prompt {row['prompt_id']} seed {row['seed']}: max pixel difference {diff:.3f}/255"
        )


def test_export_loads_in_diffusers_and_reproduces_evaluate(stored_run: StoredRun, tmp_path: Path) -> None:
    from tpgrpo.pipeline.catalog import eval_records
    from tpgrpo.pipeline.evaluate import eval_name

    out = tmp_path / "exports" / "lora"
    result = run_cli("export", "lora", *stored_run.args("--out", str(out)))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["lora"]  # no temporary folder left beside it
    assert "checkpoint 2 (ema weights" in result.stdout and "load_lora_weights" in result.stdout

    ctx = _context(stored_run)
    cfg = ctx.cfg
    card = (out / "README.md").read_text()
    name = eval_name(2, EVAL_STEPS, cfg.sampling.eval_steps)
    manifest_score = next(e.metrics["score"] for e in eval_records(ctx) if e.name == name)
    for fragment in (
        f"run `{stored_run.run_id}`, checkpoint 2 (ema weights)",
        "| weights | ema: EMA of the LoRA weights",
        f"| base model | `{cfg.model.path}`",
        "StableDiffusion3Pipeline",
        f"(key `{stored_run.reward_key}`)",
        f"| reward mode | `{cfg.reward.mode}` |",
        f"rank {cfg.update.lora_rank}, alpha {cfg.update.lora_alpha:g}",
        f"= {cfg.update.lora_alpha / cfg.update.lora_rank:g} is **folded into the weights**",
        f"| `{name}` | {stored_run.reward_key} | {EVAL_STEPS} |",
        f"{manifest_score:.4f}",
        'pipe.load_lora_weights("path/to/this/folder")',
    ):
        assert fragment in card, (fragment, card)
    assert "ComfyUI" not in card
    _load_and_reproduce(stored_run, out, 2, EVAL_STEPS)


FLUX_EVAL_STEPS = 3


@pytest.fixture(scope="module")
def flux_run(ops_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> StoredRun:
    """One trained iteration of the tiny FLUX pipeline (rank 4, alpha 6: a scale of 1.5 to fold),
    checkpoint 1 evaluated with 3 ODE steps, one prompt per task (real flows, this process)."""
    from models.tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, build_tiny_flux

    from tpgrpo.config import load_config_data
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import RunContext

    base = tmp_path_factory.mktemp("flux-run")
    build_tiny_flux().save_pretrained(base / "flux", safe_serialization=True)
    cfg = load_config_data(
        {
            "name": "fluxrun",
            "seed": 5,
            "iterations": 1,
            "model": {
                "family": "flux",
                "path": str(base / "flux"),
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
                "max_sequence_length": MAX_SEQUENCE_LENGTH,
            },
            "sampling": {"num_steps": 5, "guidance_scale": 3.5},
            "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 1, "group_size": 3},
            "branch": {"chunk_size": 16},
            "reward": {"spec": "jpeg", "mode": "tp_constrained"},
            "update": {
                "optimizer_steps": 2,
                "micro_batch": 16,
                "lr": 1e-3,
                "ema_every": 1,
                "lora_rank": 4,
                "lora_alpha": 6.0,
            },
            "storage": {"root": str(base / "runs")},
        }
    )
    assert train(cfg, run_id="fluxrun")["iterations"] == 1
    ctx = RunContext.create(cfg, "fluxrun", str(base / "runs"))
    run_evaluation(ctx, checkpoint="1", steps=FLUX_EVAL_STEPS, per_task=1)
    return StoredRun(base / "runs", "fluxrun", ctx.reward_key())


def test_flux_export_loads_in_diffusers_and_reproduces_evaluate(flux_run: StoredRun, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    result = run_cli("export", "lora", *flux_run.args("--out", str(out)))
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "FluxPipeline" in card and "rank 4, alpha 6" in card and "6 / 4 = 1.5" in card
    assert "FLUX's guidance embedding" in card
    _load_and_reproduce(flux_run, out, 1, FLUX_EVAL_STEPS)


def test_export_live_weights_for_comfyui(stored_run: StoredRun, tmp_path: Path) -> None:
    from tpgrpo.models.export import checkpoint_state, to_diffusers
    from tpgrpo.storage.blobs import read_blobs

    live_out, ema_out = tmp_path / "live", tmp_path / "ema"
    args = ("--checkpoint", "1", "--format", "comfyui")
    assert (
        run_cli(
            "export", "lora", *stored_run.args("--out", str(live_out), "--weights", "live", *args)
        ).exit_code
        == 0
    )
    assert run_cli("export", "lora", *stored_run.args("--out", str(ema_out), *args)).exit_code == 0
    file = f"{stored_run.run_id}-iter0001-live.safetensors"
    assert sorted(p.name for p in live_out.iterdir()) == ["README.md", file]
    live = load_safetensors((live_out / file).read_bytes())
    ema = load_safetensors((ema_out / f"{stored_run.run_id}-iter0001-ema.safetensors").read_bytes())

    _, blobs = read_blobs(stored_run.layout.checkpoint(1))
    expected = to_diffusers(*checkpoint_state(blobs, "live"))
    assert set(live) == set(expected) and all(k.startswith("transformer.") for k in live)
    assert not any(k.endswith(".alpha") for k in live)  # scale folded: loaders take scale 1
    for k, v in expected.items():
        torch.testing.assert_close(live[k], v, rtol=0, atol=0)
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # live and EMA weights differ

    card = (live_out / "README.md").read_text()
    assert "| weights | live: live LoRA weights" in card
    assert "not the live weights exported here" in card  # evaluations are of the EMA weights
    assert f"Copy `{file}` into `ComfyUI/models/loras/`" in card
    assert f'weight_name="{file}"' in card


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (("--checkpoint", "9"), ("checkpoint 9 outside run",)),
        (("--checkpoint", "all"), ("--checkpoint all", "give K")),
        (("--checkpoint", "0"), ("checkpoint 0 is the base model", "1 or later")),
        (("--checkpoint", "two"), ("invalid --checkpoint 'two'",)),
        (("--weights", "best"), ("unknown --weights 'best'", "ema", "live")),
        (("--format", "kohya"), ("unknown --format 'kohya'", "diffusers, comfyui")),
    ],
)
def test_bad_options_are_refused_before_writing(
    stored_run: StoredRun, tmp_path: Path, extra: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    out = tmp_path / "lora"
    assert_user_error(run_cli("export", "lora", *stored_run.args("--out", str(out), *extra)), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_unknown_run_is_refused(stored_run: StoredRun, tmp_path: Path) -> None:
    result = run_cli(
        "export", "lora", "--run", "nope", "--root", str(stored_run.root), "--out", str(tmp_path / "x")
    )
    assert_user_error(result, "unknown run 'nope'", stored_run.run_id)
    assert list(tmp_path.iterdir()) == []


def test_out_is_checked(stored_run: StoredRun, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert_user_error(
        run_cli("export", "lora", *stored_run.args("--out", str(busy))), "exists and is not empty", "--force"
    )
    assert_user_error(
        run_cli("export", "lora", *stored_run.args("--out", str(busy), "--force")),
        "holds other things than a previous export (notes.txt)",
    )
    assert (busy / "notes.txt").read_text() == "mine"
    file = tmp_path / "file"
    file.write_text("x")
    assert_user_error(run_cli("export", "lora", *stored_run.args("--out", str(file))), "is a file")
    assert_user_error(
        run_cli("export", "lora", *stored_run.args("--out", "s3://bucket/lora")), "local folder"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        run_cli("export", "lora", *stored_run.args("--out", str(empty))).exit_code == 0
    )  # an empty folder is fine
    assert (empty / "pytorch_lora_weights.safetensors").is_file()


def test_force_replaces_a_previous_export(stored_run: StoredRun, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    assert run_cli("export", "lora", *stored_run.args("--out", str(out), "--checkpoint", "1")).exit_code == 0
    first = (out / "pytorch_lora_weights.safetensors").read_bytes()
    assert_user_error(run_cli("export", "lora", *stored_run.args("--out", str(out))), "--force")
    result = run_cli("export", "lora", *stored_run.args("--out", str(out), "--force", "--format", "comfyui"))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", f"{stored_run.run_id}-iter0002-ema.safetensors"]  # the old file is gone
    assert (out / names[1]).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_a_failed_write_leaves_nothing_behind(
    stored_run: StoredRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tpgrpo.report.export as export

    real = export._write_file
    written: list[str] = []

    def failing(path: Path, data: bytes) -> None:
        if written:  # the second file: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)
        written.append(path.name)

    out = tmp_path / "lora"
    monkeypatch.setattr(export, "_write_file", failing)
    result = run_cli("export", "lora", *stored_run.args("--out", str(out)))
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither --out nor the hidden partial folder

    monkeypatch.setattr(export, "_write_file", real)
    assert run_cli("export", "lora", *stored_run.args("--out", str(out), "--checkpoint", "1")).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written.clear()
    monkeypatch.setattr(export, "_write_file", failing)
    assert run_cli("export", "lora", *stored_run.args("--out", str(out), "--force")).exit_code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_a_damaged_checkpoint_is_a_data_error(run_copy: StoredRun, tmp_path: Path) -> None:
    ema = run_copy.dir / "checkpoints" / "iter=0002" / "ema.safetensors"
    ema.write_bytes(ema.read_bytes()[:-8] + b"\0" * 8)
    out = tmp_path / "lora"
    result = run_cli("export", "lora", *run_copy.args("--out", str(out)))
    assert result.exit_code == 1
    assert re.search(r"ema\.safetensors.*does not match its checksum", result.stderr), result.stderr
    assert not out.exists()


@pytest.mark.s3
def test_export_from_a_run_on_s3(
    stored_run: StoredRun, s3_bucket: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same folder, byte for byte, whether the run lies on local disk or in S3 (moto)."""
    import s3fs

    for name, value in s3_bucket.env.items():
        monkeypatch.setenv(name, value)
    fs = s3fs.S3FileSystem(**s3_bucket.storage_options)
    fs.put(str(stored_run.dir), f"{s3_bucket.bucket}/runs/{stored_run.run_id}", recursive=True)
    remote, local = tmp_path / "remote", tmp_path / "local"
    result = run_cli(
        "export", "lora", "--run", stored_run.run_id, "--root", s3_bucket.root, "--out", str(remote)
    )
    assert result.exit_code == 0, result.output
    assert run_cli("export", "lora", *stored_run.args("--out", str(local))).exit_code == 0
    assert {p.name: p.read_bytes() for p in remote.iterdir()} == {
        p.name: p.read_bytes() for p in local.iterdir()
    }
