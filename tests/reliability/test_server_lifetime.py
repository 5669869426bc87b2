"""`kill -9` of a CLI command never leaves its temporary Prefect server behind.

`tpgrpo train` (no PREFECT_API_URL) starts its own temporary Prefect server as a child that
watches its parent (`tpgrpo.flows.server`). The command is SIGKILLed — only it, as an operator's
`kill -9 PID` does, not its process group — once its flow runs; its server must be gone within
seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import write_config

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append((int(entry.name), cmdline))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_cli_stops_its_prefect_server(flow_pipeline: Path, tmp_path: Path) -> None:
    config = write_config(flow_pipeline, tmp_path / "runs", tmp_path / "c.yaml")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        PREFECT_LOGGING_LEVEL="INFO",
        OMP_NUM_THREADS="1",
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "tpgrpo.cli.app", "train", str(config), "--run-id", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    started = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert cli.stdout is not None
        for line in cli.stdout:
            lines.append(line)
            if "Beginning flow run" in line:
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert started.wait(300), "".join(lines[-40:])
        servers = [pid for pid, cmd in _children(cli.pid) if "tpgrpo.flows.server" in cmd or "uvicorn" in cmd]
        assert len(servers) == 1, (_children(cli.pid), "".join(lines[-40:]))
        server = servers[0]
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _running(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(server), "the temporary Prefect server outlived its killed CLI process"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
