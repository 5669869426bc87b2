"""The reference reward server: hosts any registered reward spec over HTTP (protocol in `wire`).

    server = serve({"name": "shapes"})        # 127.0.0.1, a free port, a background thread
    make_reward({"name": "http", "url": server.url}).score(images, prompts)
    server.shutdown()

`serve_forever(spec, host, port)` runs the same in the foreground until Ctrl-C (the
`tpgrpo serve-reward` command). Standard library only (`http.server.ThreadingHTTPServer`, one
thread per connection, HTTP/1.1 keep-alive).

Limits, each answered with a JSON `{"error": …}`:
- `max_request_bytes`: a larger body is refused with 413 before it is read (also 411 without a
  `Content-Length`);
- `max_image_pixels`: per image, checked from the PNG header before decompressing (400);
- `max_connections`: connections beyond it are answered 503 at once and closed (load shedding;
  the client retries with backoff). Kept-alive connections hold a slot, so set it above the
  number of clients; at capacity every answer closes its connection, so slots rotate;
- `max_concurrency`: batches scored at the same time (default 1: one model, one batch at a
  time); a request waits at most `queue_timeout` seconds for its turn, then gets 503;
- `request_timeout`: seconds a connection may stay silent (idle keep-alive or a stalled body).

Garbage (not JSON, wrong fields, bad base64/PNG, mixed image sizes, prompts the reward rejects)
is 400 with a message; a reward failure is 500. The server binds to 127.0.0.1 by default and has
no authentication: expose it beyond loopback only on a trusted network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tpgrpo.errors import TpgrpoError, UserError
from tpgrpo.rewards import Reward, make_reward
from tpgrpo.rewards.wire import decode_images, loads_strict

__all__ = ["RewardServer", "serve", "serve_forever"]

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 128 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096


class RewardServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` scoring with one reward (build it with `serve`).

    Attributes:
        reward (`Reward`): the hosted reward.
        url (`str`): `http://host:port` to give the `http` reward.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        reward: Reward,
        address: tuple[str, int],
        max_request_bytes: int,
        max_image_pixels: int,
        max_connections: int,
        max_concurrency: int,
        queue_timeout: float,
        request_timeout: float,
    ) -> None:
        self.reward = reward
        self.max_request_bytes = max_request_bytes
        self.max_image_pixels = max_image_pixels
        self.queue_timeout = queue_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self._lock = threading.Lock()
        self._scoring = threading.BoundedSemaphore(max_concurrency)
        self._thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        """The `/health` answer."""
        return {
            "status": "ok",
            "key": self.reward.key,
            "version": self.reward.version,
            "max_request_bytes": self.max_request_bytes,
            "max_image_pixels": self.max_image_pixels,
        }

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread, or answer 503 when `max_connections` are open."""
        with self._lock:
            admitted = self.open_connections < self.max_connections
            self.open_connections += admitted
        if not admitted:
            body = json.dumps({"error": "server busy: too many connections; retry later"}).encode()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):  # the client may be gone already
                request.sendall(head.encode() + body)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.open_connections -= 1

    def at_capacity(self) -> bool:
        """All `max_connections` are open: answers then close their connection, so that clients
        waiting for a slot get one (kept-alive connections would otherwise hold every slot)."""
        return self.open_connections >= self.max_connections

    def start(self) -> None:
        """Serve from a daemon thread (returns at once)."""
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.05,), name=f"reward-server-{self.url}", daemon=True
        )  # polls for shutdown every 0.05 s
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving (when started) and close the listening socket; idempotent."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connection
    wbufsize = -1  # buffered: head and body leave in one send, flushed after each request

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # idle keep-alive, stalled bodies
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # without it, Nagle's algorithm and the client's delayed ACK can stall an answer 40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send(200, self.server.health())
        else:
            self._send(404, {"error": f"no such path {self.path!r}; use GET /health or POST /score"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/score":
            self._send(404, {"error": f"no such path {self.path!r}; use POST /score"}, close=True)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, {"error": "a Content-Length header is required"}, close=True)
            return
        if int(length) > self.server.max_request_bytes:
            self._send(
                413,
                {"error": f"request of {length} bytes exceeds the limit of {self.server.max_request_bytes}"},
                close=True,  # the unread body must not be taken for the next request
            )
            return
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            self.close_connection = True
            return
        try:
            images, prompts = self._parse(body)
        except UserError as e:
            self._send(400, {"error": str(e)})
            return
        if not self.server._scoring.acquire(timeout=self.server.queue_timeout):
            self._send(503, {"error": f"server busy: no scoring slot within {self.server.queue_timeout:g} s"})
            return
        try:
            result = self.server.reward.score(images, prompts)
        except UserError as e:  # e.g. a prompt the reward cannot read
            self._send(400, {"error": str(e)})
            return
        except (TpgrpoError, ValueError, TypeError, RuntimeError, OSError, MemoryError) as e:
            log.exception("reward %s failed", self.server.reward.key)
            self._send(500, {"error": f"reward {self.server.reward.key!r} failed: {type(e).__name__}: {e}"})
            return
        finally:
            self.server._scoring.release()
        answer = {
            "scores": result.score.tolist(),
            "strict": None if result.strict is None else result.strict.tolist(),
            "details": result.details,
            "key": self.server.reward.key,
            "version": self.server.reward.version,
        }
        self._send(200, answer)

    def _parse(self, body: bytes) -> tuple[Any, list[str]]:
        """`(images [N, H, W, 3], prompts)` of a request body; `UserError` on garbage."""
        try:
            data = loads_strict(body)
        except ValueError as e:
            raise UserError(f"the body is not JSON ({e})") from e
        if not isinstance(data, dict):
            raise UserError('the body must be a JSON object {"prompts": [...], "images": [...]}')
        prompts, items = data.get("prompts"), data.get("images")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise UserError("'prompts' must be a list of strings")
        if not isinstance(items, list) or len(items) != len(prompts):
            raise UserError(f"'images' must be a list of base64 PNGs, one per prompt ({len(prompts)})")
        return decode_images(items, self.server.max_image_pixels), prompts

    def _send(self, status: int, payload: Mapping[str, Any], close: bool = False) -> None:
        try:
            body = json.dumps(payload, allow_nan=False).encode()
        except (TypeError, ValueError) as e:  # details that are not JSON or not finite
            status, close = 500, False
            body = json.dumps({"error": f"the reward's answer is not valid JSON: {e}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "1")
        if close or self.server.at_capacity():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


def serve(
    spec: str | Mapping[str, Any],
    host: str = "127.0.0.1",
    port: int = 0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_connections: int = 64,
    max_concurrency: int = 1,
    queue_timeout: float = 60.0,
    request_timeout: float = 30.0,
    start: bool = True,
) -> RewardServer:
    """Build the reward of `spec` and serve it (module docstring).

    Args:
        spec (`str | Mapping`): a reward spec for `make_reward`, e.g. `{"name": "pickscore", …}`.
        host (`str`): address to bind (loopback by default).
        port (`int`): port to bind; 0 picks a free one (read it from `server.server_address`).
        max_request_bytes, max_image_pixels, max_connections, max_concurrency, queue_timeout,
            request_timeout: the limits of the module docstring.
        start (`bool`): serve from a background thread now.

    Returns:
        `RewardServer` (`.url`, `.server_address`, `.shutdown()`).

    Raises:
        `UserError`: a bad spec or limit, or an address that cannot be bound.
    """
    for name, value in {
        "max_request_bytes": max_request_bytes,
        "max_image_pixels": max_image_pixels,
        "max_connections": max_connections,
        "max_concurrency": max_concurrency,
    }.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"reward server: {name} must be a positive integer, got {value!r}")
    for name, seconds in {"queue_timeout": queue_timeout, "request_timeout": request_timeout}.items():
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
            raise UserError(f"reward server: {name} must be a positive number of seconds, got {seconds!r}")
    reward = make_reward(spec)
    try:
        server = RewardServer(
            reward,
            (host, port),
            max_request_bytes,
            max_image_pixels,
            max_connections,
            max_concurrency,
            float(queue_timeout),
            float(request_timeout),
        )
    except OSError as e:  # includes socket.gaierror (unknown host) and EADDRINUSE
        raise UserError(f"reward server: cannot listen on {host}:{port} ({e})") from e
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("reward server on %s: no authentication; expose it only on a trusted network", server.url)
    if start:
        server.start()
    return server


def serve_forever(
    spec: str | Mapping[str, Any], host: str = "127.0.0.1", port: int = 8765, **limits: Any
) -> None:
    """Serve `spec` in the foreground until Ctrl-C or SIGTERM; for `tpgrpo serve-reward`.

    Prints `serving reward '<key>' version '<version>' at <url>` once listening and
    `reward server stopped` at the end. SIGTERM (`docker stop`, `kill`) stops it like Ctrl-C when
    called from the main thread (a background job may ignore SIGINT; it never ignores SIGTERM).

    Args:
        spec, host, port: as `serve` (default port 8765).
        **limits: `serve`'s limits (`max_request_bytes`, `max_concurrency`, …).
    """
    server = serve(spec, host, port, start=False, **limits)
    reward = server.reward
    print(f"serving reward {reward.key!r} version {reward.version!r} at {server.url}", flush=True)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("reward server stopped", flush=True)
    finally:
        server.server_close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
