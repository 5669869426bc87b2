"""Fixtures for the reliability tests: one Prefect server for the session, a reference run, helpers.

Every flow process would otherwise start its own temporary Prefect server (tens of seconds on a
loaded machine). Here one server runs for the session on 127.0.0.1 and every flow, in this
process (`use_server`) or in a CLI subprocess (`server.env`), talks to it, as a deployment talks to
its Prefect server. Killing a flow process then kills only the flow, never the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flows.conftest import flow_pipeline, small_config
from rewards.test_http import scripted

from tpgrpo.storage import RunLayout

from .faults import FaultProxy

# re-exported fixtures: the tiny random SD3 pipeline of tests/flows, the scripted reward servers of
# tests/rewards
__all__ = ["flow_pipeline", "scripted"]

REWARD_KEY = "jpeg_incompressibility"
MODE = "tp_constrained"
ITERATIONS = 2


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass(frozen=True)
class PrefectServer:
    """A Prefect API server on loopback.

    Args:
        api_url (`str`): `http://127.0.0.1:<port>/api`.
        env (`dict[str, str]`): environment for flow subprocesses (the whole `os.environ` plus the
            API URL, a private client home, INFO logs, one torch thread).
        homes (`tuple[Path, ...]`): the server's and the clients' PREFECT_HOME (its database, logs).
    """

    api_url: str
    env: dict[str, str]
    homes: tuple[Path, ...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server (the same uvicorn app Prefect's temporary server runs) for the session."""
    import httpx
    import prefect

    home = tmp_path_factory.mktemp("prefect-server")
    server_env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    server_env.pop("PREFECT_API_URL", None)
    deadline = time.monotonic() + 300
    while True:
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=server_env,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/api"
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        if proc.poll() is None or time.monotonic() >= deadline:
            break  # up (or out of time: checked below)
    if proc.poll() is not None or time.monotonic() >= deadline:
        proc.kill()
        pytest.fail(f"the Prefect server did not start (exit code {proc.poll()})")
    client_home = tmp_path_factory.mktemp("prefect-client")
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(client_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    try:
        yield PrefectServer(url, env, (home, client_home))
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # this process's flow logs, before the server goes
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def use_server(server: PrefectServer) -> Iterator[None]:
    """Flows run in this process talk to `server`; torch uses one thread (a shared, loaded machine)."""
    import torch
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_LEVEL, temporary_settings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_LOGGING_LEVEL: "WARNING"}):
            yield
    finally:
        torch.set_num_threads(threads)


def write_config(pipeline: Path, root: Path | str, path: Path, **extra: Any) -> Path:
    """The small two-iteration config of the flow tests, written to `path`."""
    data = small_config(pipeline, Path("."), **extra)
    data["storage"]["root"] = str(root)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def reference_run(
    flow_pipeline: Path, prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> RunLayout:
    """An uninterrupted run of the small config (2 iterations), in this process."""
    from tpgrpo.config import load_config_data
    from tpgrpo.flows.train import train

    root = tmp_path_factory.mktemp("reference") / "runs"
    cfg = load_config_data(small_config(flow_pipeline, root))
    with use_server(prefect_server):
        assert train(cfg, run_id="ref")["iterations"] == ITERATIONS
    return RunLayout(str(root), "ref")


def run_content(layout: RunLayout, iterations: int = ITERATIONS) -> dict[str, Any]:
    """Everything a run computed, without run ids and timestamps: every dataset's rows (sorted),
    every checkpoint file's bytes (adapter, EMA, optimizer, RNG and step state: deterministic
    functions of the run's inputs) and every manifest's lineage (its hash and recorded inputs)."""
    from tpgrpo.storage import read_manifest, read_table
    from tpgrpo.storage.blobs import read_blobs

    out: dict[str, Any] = {}
    for i in range(iterations):
        for name, uri, schema in [
            ("rollouts", layout.rollouts(i), "rollouts"),
            ("branches", layout.branches(i), "branches"),
            ("rewards", layout.rewards(i, REWARD_KEY), "rewards"),
            ("annotations", layout.annotations(i, REWARD_KEY, MODE), "annotations"),
            ("updates", layout.updates(i), "updates"),
        ]:
            table = read_table(uri, schema, storage_options=layout.storage_options)
            cols = [c for c in table.column_names if c != "run_id"]
            keys = [k for k in ("trajectory_id", "boundary", "step", "optimizer_step") if k in cols]
            out[f"{name}{i}"] = table.select(cols).sort_by([(k, "ascending") for k in keys]).to_pylist()
            manifest = read_manifest(uri, layout.storage_options)
            out[f"{name}{i}/lineage"] = (manifest.hash, manifest.inputs)
    for i in range(iterations + 1):
        manifest, files = read_blobs(layout.checkpoint(i), layout.storage_options)
        out[f"checkpoint{i}/lineage"] = (manifest.hash, manifest.inputs)
        for name, blob in files.items():
            out[f"checkpoint{i}/{name}"] = blob
    return out


def tree(root: Path) -> list[str]:
    """Every path under `root` (relative), sorted; empty when `root` does not exist."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
