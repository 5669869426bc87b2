"""Fixtures for flow tests: a tiny random SD3 pipeline, a small config file, a Prefect home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from models.tiny import IMAGE_SIZE, MAX_SEQUENCE_LENGTH, build_tiny_sd3


@pytest.fixture(scope="session")
def flow_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow-pipeline") / "sd3"
    build_tiny_sd3(seed=1).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for flow processes: a private PREFECT_HOME, no analytics, patient startup."""
    home = tmp_path_factory.mktemp("prefect")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run an in-process flow with one torch thread, like the flow processes of these tests
    (`OMP_NUM_THREADS=1`, Dask workers): float reductions, hence the bits of every latent, depend on
    the thread count, so runs compared for equality must use the same one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def small_config(pipeline: Path, root: Path, **extra: Any) -> dict[str, Any]:
    """Two small iterations on the tiny pipeline, with a reward that varies on random images."""
    data: dict[str, Any] = {
        "name": "flowtest",
        "seed": 3,
        "iterations": 2,
        "model": {
            "path": str(pipeline),
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "max_sequence_length": MAX_SEQUENCE_LENGTH,
        },
        "sampling": {"num_steps": 4, "guidance_scale": 3.0},
        "rollout": {"prompts_per_batch": 2, "batches_per_iteration": 2, "group_size": 3},
        "branch": {"chunk_size": 8},
        "reward": {"spec": {"name": "jpeg_incompressibility"}, "mode": "tp_constrained"},
        "update": {"optimizer_steps": 2, "micro_batch": 8, "lr": 1e-3, "kl_beta": 0.01},
        "storage": {"root": str(root)},
    }
    for key, value in extra.items():
        node = data
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return data


@pytest.fixture
def config_file(flow_pipeline: Path, tmp_path: Path) -> Path:
    path = tmp_path / "flowtest.yaml"
    path.write_text(yaml.safe_dump(small_config(flow_pipeline, tmp_path / "runs")))
    return path
