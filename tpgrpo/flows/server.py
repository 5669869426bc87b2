"""The temporary Prefect server of a CLI command, tied to the life of the command's process.

Without `PREFECT_API_URL`, Prefect starts a temporary server (a uvicorn subprocess) on the first
flow run and stops it when the process exits normally. A CLI process killed with `kill -9` never
stops it: the server lives on (~225 MB) for hours. So the flow commands start the server
themselves (`temporary_server`), as `python -m tpgrpo.flows.server --parent PID`: the server
process watches its parent and shuts down when the parent is gone, however it died —

- on Linux at once: the kernel sends it SIGTERM when its parent dies (`PR_SET_PDEATHSIG`);
- everywhere within a second: a watchdog thread sees that its parent pid changed or is gone;

and it exits by itself (hard) if a graceful shutdown takes longer than `SHUTDOWN_S`. One server
per process, reused by every flow of the process (as Prefect's own), stopped at exit. With
`PREFECT_API_URL` set (a Prefect server, or a test's), nothing is started.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tpgrpo.errors import TpgrpoError

SHUTDOWN_S = 10.0
POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


@dataclass
class _Server:
    process: subprocess.Popen[bytes]
    api_url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SHUTDOWN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_SERVER: _Server | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start() -> _Server:
    import httpx
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    while True:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "tpgrpo.flows.server", "--parent", str(os.getpid()), "--port", str(port)],
            env=env,
        )
        url = f"http://127.0.0.1:{port}/api"
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return _Server(process, url)
            time.sleep(0.1)
        if process.poll() is None or time.monotonic() >= deadline:  # out of time
            _Server(process, url).stop()
            raise TpgrpoError(
                "the temporary Prefect server did not start in time; raise PREFECT_SERVER_EPHEMERAL_"
                "STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a Prefect server"
            )
        # it exited at once (e.g. the port was taken meanwhile): try another port


@contextlib.contextmanager
def temporary_server() -> Iterator[str | None]:
    """Runs the block against this process's temporary Prefect server (started on first use).

    Yields:
        `str | None`: the server's API URL, or None when `PREFECT_API_URL` names a server already.
    """
    global _SERVER
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    if _SERVER is None or _SERVER.process.poll() is not None:
        _SERVER = _start()
        atexit.register(_SERVER.stop)
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = _SERVER.api_url  # for subprocesses: Dask workers, torchrun ranks
    try:
        with temporary_settings(updates={PREFECT_API_URL: _SERVER.api_url}):
            yield _SERVER.api_url
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


# --- the server process ------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent` dies: at once on Linux, within `POLL_S` anywhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:
        while True:
            alive = os.getppid() == parent
            if alive:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if not alive:
                break
            time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully…
        time.sleep(SHUTDOWN_S)
        os._exit(1)  # …or not at all

    threading.Thread(target=watch, name="tpgrpo-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """`python -m tpgrpo.flows.server --parent PID --port N`: the Prefect API until PID is gone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--parent", type=int, required=True, help="exit when this process is gone")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
