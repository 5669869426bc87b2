"""The `http` reward: a client of a remote reward server (protocol in `tpgrpo.rewards.wire`).

Images are sent as base64 PNGs in JSON (never pickles) to `<url>/score`, at most `batch_size` per
request; the answers are validated (count, finite numbers, types) and joined. At construction the
client asks `<url>/health` (unless `health_check=False`) and takes its `version` from the server's
`key` and `version` (`"<key>@<version>"`); an answer from a server that has since changed its
reward is refused.

Faults:
- retried `retries` times, waiting `backoff · 2^k` seconds before retry k = 0, 1, …: connection
  errors, timeouts (`timeout` seconds to connect and between bytes of the answer, requests'
  semantics), truncated answers, HTTP 5xx and 429;
- not retried (the same request would fail again): HTTP 4xx, and a delivered answer that is not
  valid (malformed JSON, wrong count, a score that is not a finite number);
- either way the result is a `RewardError` that names the server and the fault; a `RewardResult`
  never holds a NaN.

Scoring is idempotent, so resending a request whose answer was lost or late is safe (the server
may score that batch twice).

The client is safe to share between threads (one HTTP session per thread).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards.base import RewardResult, check_batch
from tpgrpo.rewards.wire import encode_image, loads_strict, parse_scores

__all__ = ["HttpReward"]


class HttpReward:
    """Scores images on a remote reward server (see the module docstring).

    Args:
        url (`str`): the server's base URL, `http://host:port[/prefix]` or `https://…`.
        key (`str`): storage key of the scores.
        timeout (`float`): seconds to connect and between bytes of an answer (> 0).
        retries (`int`): extra attempts after a transient fault (≥ 0).
        backoff (`float`): seconds before the first retry, doubled for each next one (≥ 0).
        batch_size (`int`): most images per request.
        health_check (`bool`): ask `GET /health` now (with the same retries) and take the version
            from it; without it `version` is required.
        version (`str`, *optional*): the version to record instead of the server's.

    Raises:
        `UserError`: bad parameters (URL scheme, non-positive timeout, …).
        `RewardError`: the health check failed after the retries.
    """

    def __init__(
        self,
        url: str,
        key: str = "http",
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 32,
        health_check: bool = True,
        version: str | None = None,
    ) -> None:
        self.url = _check_url(url)
        if not isinstance(key, str) or not key:
            raise UserError(f"http reward: key must be a non-empty string, got {key!r}")
        if not _positive(timeout):
            raise UserError(f"http reward: timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UserError(f"http reward: retries must be an integer ≥ 0, got {retries!r}")
        if not (_positive(backoff) or (backoff == 0 and not isinstance(backoff, bool))):
            raise UserError(f"http reward: backoff must be a number of seconds ≥ 0, got {backoff!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"http reward: batch_size must be a positive integer, got {batch_size!r}")
        if not health_check and not version:
            raise UserError(
                "http reward: pass version= when health_check is off (it is stored with the scores)"
            )
        self.key = key
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.batch_size = batch_size
        self._local = threading.local()
        self.remote: dict[str, Any] = {}
        if health_check:
            self.remote = self.health()
        self.version = version or f"{self.remote['key']}@{self.remote['version']}"

    def health(self) -> dict[str, Any]:
        """`GET /health` (with retries): the server's `{"status", "key", "version", …}`.

        Raises:
            `RewardError`: unreachable after the retries, an error status, or a malformed answer.
        """
        body = self._request("GET", "/health", None)
        try:
            data = loads_strict(body)
        except ValueError as e:
            raise RewardError(f"reward server {self.url}/health answered malformed JSON ({e})") from e
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("key", "version")):
            raise RewardError(
                f"reward server {self.url}/health must answer key and version strings, got {data!r:.120}"
            )
        return data

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        """Score images on the server, `batch_size` per request.

        Args:
            images (`np.ndarray` uint8 `[N, H, W, 3]`): RGB images.
            prompts (`Sequence[str]`): `N` prompts.

        Returns:
            `RewardResult` with the server's scores, strict verdicts and details.

        Raises:
            `UserError`: bad images or prompts.
            `RewardError`: the server failed (module docstring).
        """
        check_batch(images, prompts)
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]  # [B, H, W, 3]
            texts = [str(p) for p in prompts[start : start + self.batch_size]]
            payload = json.dumps({"prompts": texts, "images": [encode_image(im) for im in chunk]}).encode()
            result, meta = parse_scores(self._request("POST", "/score", payload), len(chunk), self.url)
            for name, value in meta.items():
                if name in self.remote and self.remote[name] != value:
                    raise RewardError(
                        f"reward server {self.url} now answers {name} {value!r}, but {self.remote[name]!r} "
                        "at connection: the hosted reward changed; make a new client to record its version"
                    )
            parts.append(result)
        return RewardResult.concat(parts) if parts else RewardResult(np.zeros(0), None, [])

    def close(self) -> None:
        """Close this thread's HTTP session."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, path: str, payload: bytes | None) -> bytes:
        """The body of a 200 answer, retrying transient faults with exponential backoff.

        Raises:
            `RewardError`: a 4xx answer at once, other faults after `retries` retries.
        """
        import requests

        url = self.url + path
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        fault = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._session().request(
                    method, url, data=payload, headers=headers, timeout=self.timeout
                )
            except requests.Timeout:
                fault = f"no answer within the timeout of {self.timeout:g} s"
                self.close()  # a late answer must not be read as the next one's
                continue
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                fault = f"connection failed ({type(e).__name__}: {_first_line(e)})"
                self.close()  # a fresh connection for the next attempt
                continue
            if response.status_code == 200:
                return bytes(response.content)
            message = _error_message(response.content)
            if response.status_code >= 500 or response.status_code == 429:
                fault = f"HTTP {response.status_code}: {message}"
                continue
            hint = "; lower batch_size" if response.status_code == 413 else ""
            raise RewardError(
                f"reward server {url} refused the request: HTTP {response.status_code}: {message}{hint}"
            )
        tries = self.retries + 1
        raise RewardError(
            f"reward server {url}: {fault} (gave up after {tries} attempt{'s' * (tries > 1)}, backoff "
            f"{self.backoff:g} s doubling); check that the server runs (`tpgrpo serve-reward`) and `url`"
        )


def _check_url(url: object) -> str:
    """The URL without a trailing slash; `UserError` unless it is `http(s)://host[:port][/path]`."""
    if not isinstance(url, str):
        raise UserError(f"http reward: url must be a string like 'http://127.0.0.1:8765', got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise UserError(f"http reward: bad url {url!r} ({e})") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"http reward: url must be http://host:port or https://host:port, got {url!r}")
    if parts.query or parts.fragment:
        raise UserError(f"http reward: url must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def _positive(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < math.inf


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else ""


def _error_message(body: bytes) -> str:
    """The `error` of a JSON error answer, else the start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace") or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:500]
    return json.dumps(data)[:200]
