"""The `pretrain` flow: build and train the tiny SD3 checkpoint of the embedded world.

build (seeded) → VAE → latent normalisation → transformer + text encoders → save_pretrained →
evaluate on the held-out prompts. Each phase resumes from its state in the work directory, and
the data and noise of every step derive from the seed, so a rerun of the same command continues
where it stopped and ends with the same weights.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from tpgrpo.world.pretrain import PretrainConfig

_TASK: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


def _progress(phase: str, every: int = 100) -> Any:
    started = time.perf_counter()

    def report(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            get_run_logger().info(f"{phase} step {step}: {shown} ({time.perf_counter() - started:.0f} s)")

    return report


@task(name="pretrain-vae", **_TASK)
def vae_task(pipeline: Any, cfg: PretrainConfig, work: Path) -> dict[str, float]:
    from tpgrpo.world.pretrain import fit_latent_normalisation, train_vae

    train_vae(pipeline, cfg, work, _progress("vae"))
    return fit_latent_normalisation(pipeline, cfg)


@task(name="pretrain-transformer", **_TASK)
def transformer_task(pipeline: Any, cfg: PretrainConfig, work: Path, max_sequence_length: int) -> None:
    from tpgrpo.world.pretrain import train_transformer

    train_transformer(pipeline, cfg, work, max_sequence_length, _progress("transformer"))


@task(name="save-checkpoint", **_TASK)
def save_task(pipeline: Any, out: Path, record: dict[str, Any]) -> None:
    """save_pretrained into a temp folder, then swap it in (never a half-written checkpoint)."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    (tmp / "pretrain.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


@flow(name="tpgrpo-pretrain", persist_result=False)
def pretrain_flow(out: str, work: str, cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrain the tiny pipeline into `out` (state kept in `work` for resuming)."""
    from tpgrpo.world.prompts import VOCABULARY
    from tpgrpo.world.tiny import TinyConfig, build_tiny_pipeline

    tiny = TinyConfig()
    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_tiny_pipeline(VOCABULARY, tiny, seed=cfg.seed)
    norm = vae_task(pipeline, cfg, work_dir)
    transformer_task(pipeline, cfg, work_dir, tiny.t5_max_length)
    record = {"pretrain": json.loads(cfg.to_json()), "tiny": json.loads(tiny.to_json()), "vae_latents": norm}
    save_task(pipeline, Path(out), record)
    return record
