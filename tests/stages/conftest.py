"""Fixtures for stage tests: a tiny random-weight SD3 pipeline (saved once) and small configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from models.tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, build_tiny_sd3

from tpgrpo.config import Config, load_config_data


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD3 pipeline saved with `save_pretrained`."""
    path = tmp_path_factory.mktemp("stage-pipeline") / "sd3"
    build_tiny_sd3().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def make_cfg(sd3_dir: Path, tmp_path: Path) -> Callable[..., Config]:
    """`make_cfg(**overrides)` → a small valid Config on the tiny pipeline (dotted keys allowed)."""

    def make(**overrides: Any) -> Config:
        data: dict[str, Any] = {
            "name": "t",
            "iterations": 2,
            "model": {
                "path": str(sd3_dir),
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
                "max_sequence_length": MAX_SEQUENCE_LENGTH,
            },
            "sampling": {"num_steps": 5, "guidance_scale": 3.0},
            "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 1, "group_size": 3},
            "branch": {"chunk_size": 4},
            "update": {"optimizer_steps": 2, "micro_batch": 8},
            "storage": {"root": str(tmp_path / "runs")},
        }
        sets = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
        return load_config_data(data, sets)

    return make


@pytest.fixture
def policy(make_cfg: Callable[..., Config]) -> Any:
    """The tiny policy with a LoRA adapter (fresh per test)."""
    from tpgrpo.models import load_policy
    from tpgrpo.models.lora import add_lora

    cfg = make_cfg()
    p = load_policy(cfg.model)
    add_lora(p, rank=cfg.update.lora_rank, alpha=cfg.update.lora_alpha, seed=0)
    return p
