"""Pretraining of the tiny SD3 pipeline on the synthetic world: VAE, then transformer + text encoders.

Two explicit loops, each resumable from its last saved step and deterministic under a seed: the
data and noise of step `i` are drawn from generators seeded by `(seed, phase, i)`, so a resumed run
draws exactly what an uninterrupted one would have drawn.

- **VAE** (`AutoencoderKL`): L1 + MSE reconstruction of 64×64 images plus a small KL term; then SD3's
  latent normalisation `z = (latent − shift_factor)·scaling_factor` is fitted to the data (mean 0,
  std 1) and written into the VAE config.
- **Transformer** (text encoders frozen at their seeded initialisation, as SD3 keeps its text
  encoders frozen): the rectified-flow loss of SD3 — `x_σ = (1 − σ)·z + σ·ε`, target velocity
  `ε − z`, σ ~ logit-normal(0, 1), timestep `1000·σ` — on a fixed pool of encoded scenes (fresh
  posterior samples each step), with caption dropout to the empty prompt (so classifier-free
  guidance works), AdamW with warmup then a constant rate (a run of
  `n` steps is a prefix of a longer one), an EMA of the weights with warmup (decay
  `min(0.999, (1 + t)/(10 + t))`), which is what gets saved.

State between chunks is saved as safetensors + JSON under a work directory (`models/state.py`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tpgrpo.models.conditioning import Conditioning
from tpgrpo.models.sd3 import SD3Policy
from tpgrpo.models.state import EMA, optimizer_from_bytes, optimizer_to_bytes
from tpgrpo.world.scenes import sample_batch

Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of the two pretraining phases."""

    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_warmup: int = 100
    steps: int = 8000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 500
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    save_every: int = 500
    pool_size: int = 65536

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def step_rng(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one training step (resume-exact)."""
    rng = np.random.default_rng([seed, phase, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 `[B, H, W, 3]` → float `[B, 3, H, W]` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup then cosine decay to 10 % of `base` at `total` (the VAE's schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def constant_lr(step: int, base: float, warmup: int) -> float:
    """Linear warmup then constant (the transformer's schedule: the state at step `n` does not
    depend on the total, so a shorter run is a prefix of a longer one)."""
    return base * min(1.0, (step + 1) / warmup)


def _chunks(start: int, total: int, every: int) -> Iterator[tuple[int, int]]:
    for a in range(start, total, every):
        yield a, min(total, a + every)


# --- VAE -------------------------------------------------------------------------------------------


def train_vae(pipeline: Any, cfg: PretrainConfig, work: Path, progress: Progress | None = None) -> None:
    """Train `pipeline.vae` to `cfg.vae_steps`, resuming from `work/vae` if saved there."""
    vae = pipeline.vae.to(memory_format=torch.channels_last)  # ~4x faster convolutions on CPU
    state_dir = work / "vae"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = _load_phase(state_dir, {"vae": vae}, opt)
    vae.train().requires_grad_(True)
    for a, b in _chunks(start, cfg.vae_steps, cfg.save_every):
        for step in range(a, b):
            rng, gen = step_rng(cfg.seed, 0, step)
            images, _ = sample_batch(rng, cfg.vae_batch)
            x = to_pixels(images).contiguous(memory_format=torch.channels_last)  # [B, 3, 64, 64]
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(gen)).sample  # [B, 3, 64, 64]
            rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
            loss = rec + cfg.vae_kl_weight * posterior.kl().mean()
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, cfg.vae_lr, cfg.vae_warmup, cfg.vae_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if progress is not None:
                progress(step, {"loss": float(loss.detach()), "recon": float(rec.detach())})
        _save_phase(state_dir, {"vae": vae}, opt, b)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def fit_latent_normalisation(pipeline: Any, cfg: PretrainConfig, samples: int = 2048) -> dict[str, float]:
    """Set `vae.config.shift_factor/scaling_factor` so latents have mean 0 and std 1 on the world."""
    vae = pipeline.vae
    rng, gen = step_rng(cfg.seed, 1, 0)
    latents = []
    for _ in range(0, samples, 128):
        images, _ = sample_batch(rng, 128)
        latents.append(vae.encode(to_pixels(images)).latent_dist.sample(gen))
    z = torch.cat(latents)  # [N, C, h, w]
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {"shift_factor": shift, "scaling_factor": scale}


# --- transformer + text encoders -------------------------------------------------------------------


@dataclass
class LatentPool:
    """A fixed pool of encoded scenes: posterior mean and std `[N, C, h, w]` and their prompts.

    Encoding every training batch afresh would cost as much as the transformer's forward; the
    pool is encoded once and each step draws a batch from it with a fresh posterior sample.
    """

    mean: torch.Tensor
    std: torch.Tensor
    prompts: list[str]


@torch.no_grad()
def build_latent_pool(pipeline: Any, cfg: PretrainConfig, work: Path, chunk: int = 256) -> LatentPool:
    """Encode `cfg.pool_size` scenes (deterministic under the seed; cached in `work/pool`)."""
    from safetensors.torch import load_file, save_file

    where = work / "pool"
    if (where / "prompts.json").is_file():
        tensors = load_file(where / "latents.st")
        return LatentPool(tensors["mean"], tensors["std"], json.loads((where / "prompts.json").read_text()))
    vae = pipeline.vae.to(memory_format=torch.channels_last)
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    means, stds, prompts = [], [], []
    for i in range(0, cfg.pool_size, chunk):
        rng, _ = step_rng(cfg.seed, 3, i)
        images, batch_prompts = sample_batch(rng, min(chunk, cfg.pool_size - i))
        posterior = vae.encode(to_pixels(images).contiguous(memory_format=torch.channels_last)).latent_dist
        means.append((posterior.mean.float() - shift) * scale)  # [b, C, h, w] in normalised units
        stds.append(posterior.std.float() * scale)
        prompts.extend(batch_prompts)
    pool = LatentPool(torch.cat(means).contiguous(), torch.cat(stds).contiguous(), prompts)
    where.mkdir(parents=True, exist_ok=True)
    save_file({"mean": pool.mean, "std": pool.std}, where / "latents.st")
    (where / "prompts.json").write_text(json.dumps(prompts))
    return pool


class PromptCache:
    """Frozen text-encoder outputs per prompt (the text encoders stay at their initialisation)."""

    def __init__(self, policy: SD3Policy):
        self.policy = policy
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, prompts: list[str]) -> Conditioning:
        missing = sorted({p for p in prompts if p not in self.cache})
        for i in range(0, len(missing), 256):
            part = missing[i : i + 256]
            cond = self.policy.encode(part)
            for j, p in enumerate(part):
                self.cache[p] = (cond.embeds[j], cond.pooled[j])
        return Conditioning(
            embeds=torch.stack([self.cache[p][0] for p in prompts]),  # [B, L, D]
            pooled=torch.stack([self.cache[p][1] for p in prompts]),  # [B, P]
        )


def train_transformer(
    pipeline: Any,
    cfg: PretrainConfig,
    work: Path,
    max_sequence_length: int,
    progress: Progress | None = None,
) -> None:
    """Train the transformer to `cfg.steps` on the latent pool, resuming from `work/transformer`.

    The text encoders stay frozen (as in SD3 training). At the end the EMA weights are copied into
    the transformer.
    """
    transformer = pipeline.transformer
    modules = {"transformer": transformer}
    params = dict(transformer.named_parameters())
    policy = SD3Policy(pipeline, max_sequence_length=max_sequence_length)
    pool = build_latent_pool(pipeline, cfg, work)
    text = PromptCache(policy)
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=0.01)
    ema = EMA(params, cfg.ema_decay)
    state_dir = work / "transformer"
    start = _load_phase(state_dir, modules, opt, ema)
    if start > cfg.steps:
        raise ValueError(
            f"{state_dir} holds a state at step {start}, past the requested {cfg.steps} steps; "
            "use a fresh work folder (training is deterministic under the seed)"
        )
    transformer.train().requires_grad_(True)
    for a, b in _chunks(start, cfg.steps, cfg.save_every):
        for step in range(a, b):
            rng, gen = step_rng(cfg.seed, 2, step)
            idx = torch.from_numpy(rng.integers(0, len(pool.prompts), cfg.batch))  # [B]
            drop = rng.random(cfg.batch) < cfg.caption_dropout
            prompts = ["" if d else pool.prompts[i] for i, d in zip(idx.tolist(), drop, strict=True)]
            eps = torch.randn(pool.mean[idx].shape, generator=gen)
            z = pool.mean[idx] + pool.std[idx] * eps  # [B, C, h, w] posterior sample
            noise = torch.randn(z.shape, generator=gen)  # [B, C, h, w]
            sigma = torch.sigmoid(torch.randn(z.shape[0], generator=gen))  # [B] logit-normal(0, 1)
            s = sigma.view(-1, 1, 1, 1)
            x = (1 - s) * z + s * noise  # [B, C, h, w]
            pred = policy.forward(x, sigma, text(prompts))  # [B, C, h, w]
            loss = F.mse_loss(pred, noise - z)
            for g in opt.param_groups:
                g["lr"] = constant_lr(step, cfg.lr, cfg.warmup)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            ema.decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # warmup: early averages forget the init
            ema.update(params)
            if progress is not None:
                progress(step, {"loss": float(loss.detach())})
        _save_phase(state_dir, modules, opt, b, ema)
    ema.copy_to(params)
    transformer.eval().requires_grad_(False)


# --- phase state ----------------------------------------------------------------------------------


def _save_phase(
    state_dir: Path,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    step: int,
    ema: EMA | None = None,
) -> None:
    """Save weights, optimizer and EMA of a phase; `step.json` last marks the save complete."""
    from safetensors.torch import save_model

    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "step.json").unlink(missing_ok=True)
    for name, module in modules.items():
        save_model(module, str(state_dir / f"{name}.st"))  # handles T5's tied embeddings
    blob, meta = optimizer_to_bytes(opt)
    (state_dir / "optimizer.st").write_bytes(blob)
    (state_dir / "optimizer.json").write_text(meta)
    if ema is not None:
        (state_dir / "ema.st").write_bytes(ema.to_bytes())
        (state_dir / f"ema-{step:06d}.st").write_bytes(ema.to_bytes())  # kept to compare steps
    (state_dir / "step.json").write_text(json.dumps({"step": step, "saved": time.time()}))


def _load_phase(
    state_dir: Path,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    ema: EMA | None = None,
) -> int:
    """Restore a phase saved by `_save_phase`; returns the step to continue from (0 if none)."""
    from safetensors.torch import load_model

    marker = state_dir / "step.json"
    if not marker.is_file():
        return 0
    for name, module in modules.items():
        load_model(module, str(state_dir / f"{name}.st"))
    optimizer_from_bytes(
        opt, (state_dir / "optimizer.st").read_bytes(), (state_dir / "optimizer.json").read_text()
    )
    if ema is not None:
        ema.load_bytes((state_dir / "ema.st").read_bytes())
    return int(json.loads(marker.read_text())["step"])
