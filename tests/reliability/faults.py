"""A fault-injecting HTTP proxy for S3 tests: s3fs → proxy (127.0.0.1) → moto server.

The proxy forwards every request to the upstream endpoint and answers with the upstream's
answer, except when a `Fault` rule matches: then it answers an S3-style error status, drops the
connection without an answer, delays, or sends a truncated body. Point `endpoint_url` at
`proxy.url` and the real client stack (s3fs → aiobotocore → aiohttp, with botocore's and s3fs's
own retries) meets the faults.

    proxy = FaultProxy(s3_endpoint)
    proxy.add(Fault("status", method="PUT", path=r"part-", times=2, status=503))
    ...
    proxy.close()
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Action = Literal["status", "drop", "delay", "truncate", "status_after"]

_ERROR_CODES = {500: "InternalError", 503: "SlowDown", 502: "BadGateway", 504: "GatewayTimeout"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class Fault:
    """One fault rule.

    Args:
        action (`str`): `"status"` answers `status` without forwarding; `"status_after"` forwards
            (the upstream applies the request) and then answers `status` (a lost answer);
            `"drop"` closes the connection without an answer; `"delay"` waits `seconds` then
            forwards; `"truncate"` forwards and sends only half of the answer's body.
        method (`str`, *optional*): HTTP method to match (any when None).
        path (`str`): regex searched in the request path (and query).
        times (`int`, *optional*): inject this many times, then pass (forever when None).
        every (`int`): inject on every `every`-th matching request only (1: each one).
        status (`int`): the status of `"status"` / `"status_after"`.
        seconds (`float`): the delay of `"delay"`.
    """

    action: Action
    method: str | None = None
    path: str = ""
    times: int | None = None
    every: int = 1
    status: int = 503
    seconds: float = 0.0
    matched: int = field(default=0, init=False)
    injected: int = field(default=0, init=False)

    def applies(self, method: str, path: str) -> bool:
        """Counts a matching request and says whether to inject this time."""
        if (self.method is not None and method != self.method) or not re.search(self.path, path):
            return False
        self.matched += 1
        if self.times is not None and self.injected >= self.times:
            return False
        if self.matched % self.every:
            return False
        self.injected += 1
        return True


class FaultProxy:
    """The proxy (see the module docstring); serves from a daemon thread until `close`.

    Args:
        upstream (`str`): `http://host:port` of the real endpoint.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None, upstream
        self.upstream = (parts.hostname, parts.port)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, *faults: Fault) -> None:
        """Adds fault rules (checked in order; the first that injects wins)."""
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        """Removes every rule: from now on the proxy only forwards."""
        with self._lock:
            self.faults.clear()

    def injected(self) -> int:
        """Faults injected so far, over all rules."""
        with self._lock:
            return sum(f.injected for f in self.faults)

    def decide(self, method: str, path: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.applies(method, path):
                    return fault
        return None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _error_body(status: int) -> bytes:
    code = _ERROR_CODES.get(status, "InternalError")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected fault {status}</Message><RequestId>fault</RequestId></Error>"
    ).encode()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                return answer.status, answer.reason, answer.getheaders(), data
            finally:
                conn.close()

        def _answer(
            self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes, cut: bool = False
        ) -> None:
            self.send_response(status, reason)
            length = None
            for name, value in headers:
                if name.lower() == "content-length":
                    length = value
                elif name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", length if length is not None else "0")
            else:
                self.send_header("Content-Length", str(len(data)))
            if cut:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data[: len(data) // 2] if cut else data)
            self.wfile.flush()

        def _handle(self) -> None:
            body = self._body()
            fault = proxy.decide(self.command, self.path)
            if fault is not None and fault.action == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.action == "status":
                self._answer(
                    fault.status, "Injected", [("Content-Type", "application/xml")], _error_body(fault.status)
                )
                return
            if fault is not None and fault.action == "delay":
                time.sleep(fault.seconds)
            status, reason, headers, data = self._forward(body)
            if fault is not None and fault.action == "status_after":
                self._answer(
                    fault.status, "Injected", [("Content-Type", "application/xml")], _error_body(fault.status)
                )
                return
            try:
                self._answer(
                    status, reason, headers, data, cut=fault is not None and fault.action == "truncate"
                )
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
