"""Helpers shared by the benchmarks: the machine's description and the reference reward server.

The scripts run as `python bench/<name>.py`, so this folder is on `sys.path` and they import it as
`_common`.
"""

from __future__ import annotations

import platform
import subprocess
import sys
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
