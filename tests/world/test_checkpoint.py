"""The shipped tiny checkpoint: loads offline through the user's `from_pretrained` path, has the
documented sizes, and samples deterministically images the `shapes` reward recognises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

CHECKPOINT = Path(__file__).resolve().parents[2] / "tpgrpo" / "world" / "checkpoint"
pytestmark = pytest.mark.skipif(
    not (CHECKPOINT / "model_index.json").is_file(), reason="the embedded checkpoint is not built yet"
)


def test_size_and_files() -> None:
    files = [p for p in CHECKPOINT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 1024 * 1024  # ≤ 20 MB
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)  # never a pickle
    record = json.loads((CHECKPOINT / "pretrain.json").read_text())
    assert {"pretrain", "tiny", "vae_latents"} <= set(record)


def test_loads_offline_with_from_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusion3Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusion3Pipeline.from_pretrained(CHECKPOINT)  # the call a user makes for SD3.5-M
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        module.eval()
    assert pipe.transformer.config.in_channels == 4 and pipe.transformer.config.sample_size == 16
    images = pipe(
        prompt=["a photo of a red circle", "a photo of two blue squares"],
        num_inference_steps=10,
        height=64,
        width=64,
        max_sequence_length=14,
        generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
        output_type="np",
    ).images
    assert images.shape == (2, 64, 64, 3)
    assert np.isfinite(images).all() and images.std() > 0.02  # not a blank or constant image


def test_policy_samples_are_deterministic_and_recognised() -> None:
    from tpgrpo.config import ModelConfig
    from tpgrpo.models import load_policy
    from tpgrpo.rewards import make_reward
    from tpgrpo.stages.evaluate import sample_ode

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    policy = load_policy(ModelConfig(path="embedded:tiny"))
    colors, shapes = ("red", "green", "blue", "yellow"), ("circle", "square")
    prompts = [f"a photo of a {c} {s}" for c in colors for s in shapes]
    seeds = list(range(len(prompts)))
    a = sample_ode(policy, prompts, seeds, num_steps=10, guidance_scale=4.5, height=64, width=64)
    b = sample_ode(policy, prompts, seeds, num_steps=10, guidance_scale=4.5, height=64, width=64)
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    result = make_reward("shapes").score(a, prompts)
    assert result.score.mean() > 0.5  # the right colour and shape most of the time
