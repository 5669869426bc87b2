"""Helpers shared by the benchmarks: the machine's description, the reference reward server and
`tpgrpo` commands in subprocesses.

The scripts run as `python bench/<name>.py`, so this folder is on `sys.path` and they import it as
`_common`.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def start_reward_server(concurrency: int, connections: int) -> tuple[subprocess.Popen[str], str]:
    """`serve_forever("shapes")` on a free loopback port in a subprocess; returns it and its URL.

    The URL is read from the server's banner; a server that does not announce itself on 127.0.0.1
    is killed and the benchmark stops.
    """
    code = (
        "from tpgrpo.rewards.server import serve_forever; "
        f"serve_forever('shapes', port=0, max_concurrency={concurrency}, max_connections={connections})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    if " at http://127.0.0.1:" not in banner:
        proc.kill()
        raise SystemExit(f"the reward server did not start on loopback: {banner!r}")
    return proc, banner.rsplit(" at ", 1)[1].strip()


@dataclass(frozen=True)
class CliRun:
    """One finished `tpgrpo` command: its stdout (empty unless captured), wall and CPU seconds."""

    stdout: str
    wall_s: float
    cpu_s: float


def run_cli(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> CliRun:
    """Run `tpgrpo ARGS…` in a subprocess of this interpreter; a failure stops with its stderr.

    `env` is added to this process's environment (Prefect analytics are always off). The CPU
    seconds are those of the children that ended meanwhile: exact for one command at a time,
    approximate when other commands run side by side in threads.
    """
    full_env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | (env or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tpgrpo.cli.app", *args],
        env=full_env,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-3000:]
        raise RuntimeError(f"tpgrpo {' '.join(args)} failed with exit code {proc.returncode}\n{tail}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return CliRun(proc.stdout or "", wall, cpu)
