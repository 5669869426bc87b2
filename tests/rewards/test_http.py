"""The `http` reward client: round trips with the reference server, and faults from a scripted
server (down, slow, 5xx, dropped connections, garbage, NaN, wrong counts) → retries with backoff,
then a `RewardError`; never a NaN in a result."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards import make_reward
from tpgrpo.rewards.http import HttpReward
from tpgrpo.rewards.server import RewardServer, serve
from tpgrpo.world.scenes import sample_batch

FAST = {"timeout": 2.0, "retries": 2, "backoff": 0.01}  # short waits for fault tests


class ScriptedServer(ThreadingHTTPServer):
    """A deliberately unreliable reward server: each POST /score takes the next step of `steps`
    (then "ok"); it records the number of images of every request."""

    daemon_threads = True
    block_on_close = False  # do not wait for handlers still sleeping in a "slow" step

    def __init__(self, steps: list[Any], health: Any = "ok") -> None:
        self.steps = list(steps)
        self.health_step = health
        self.sizes: list[int] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up mid-answer (timeouts, retries) is expected here: not printed to
        stderr, where it would mix with the output of a CLI under test."""


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.server.health_step == "ok":
            self._json(200, {"status": "ok", "key": "fake", "version": "7"})
        else:
            self._raw(200, self.server.health_step)

    def do_POST(self) -> None:
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["images"])
        with self.server.lock:
            self.server.sizes.append(n)
            step = self.server.steps.pop(0) if self.server.steps else "ok"
        ok = {
            "scores": [0.25 * i for i in range(n)],
            "strict": [i % 2 == 0 for i in range(n)],
            "details": [{"i": i} for i in range(n)],
            "key": "fake",
            "version": "7",
        }
        if step == "ok":
            self._json(200, ok)
        elif step == "slow":
            time.sleep(2.0)
            self._json(200, ok)
        elif step == "drop":
            self.close_connection = True  # close without an answer
        elif isinstance(step, int):
            self._json(step, {"error": f"scripted failure {step}"})
        elif isinstance(step, dict):
            self._json(200, {**ok, **step})
        else:
            self._raw(
                200, step.replace("N", str(n)).replace("SCORES", ", ".join(["0.5"] * (n - 1) + ["NaN"]))
            )

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._raw(status, json.dumps(payload))

    def _raw(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[ScriptedServer] = []

    def start(steps: list[Any], health: Any = "ok") -> ScriptedServer:
        server = ScriptedServer(steps, health)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def shapes_server() -> Iterator[RewardServer]:
    server = serve("shapes")
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, list[str]]:
    return sample_batch(np.random.default_rng(0), 10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_round_trip_equals_the_local_reward(shapes_server: RewardServer, batch: Any) -> None:
    images, prompts = batch
    remote = make_reward({"name": "http", "url": shapes_server.url + "/", "batch_size": 4})
    assert remote.key == "http" and remote.version == "shapes@1"
    got, want = remote.score(images, prompts), make_reward("shapes").score(images, prompts)
    np.testing.assert_array_equal(got.score, want.score)
    assert got.strict is not None and want.strict is not None
    np.testing.assert_array_equal(got.strict, want.strict)
    assert got.details == want.details
    assert len(remote.score(images[:0], [])) == 0


def test_threads_share_one_client(shapes_server: RewardServer, batch: Any) -> None:
    images, prompts = batch
    remote = make_reward({"name": "http", "url": shapes_server.url, "key": "remote_shapes"})
    want = make_reward("shapes").score(images, prompts).score
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(remote.score(images, prompts).score)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, want) for r in results)


def test_batches_are_split(scripted: Any, batch: Any) -> None:
    server = scripted([])
    images, prompts = batch
    res = make_reward({"name": "http", "url": server.url, "batch_size": 4, **FAST}).score(
        images[:9], prompts[:9]
    )
    assert server.sizes == [4, 4, 1]
    np.testing.assert_array_equal(res.score, [0, 0.25, 0.5, 0.75] * 2 + [0])
    assert (
        res.details[4] == {"i": 0}
        and res.strict is not None
        and res.strict[:3].tolist() == [True, False, True]
    )


def test_server_down_at_construction(batch: Any) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(RewardError, match=r"/health: connection failed .*after 3 attempts.*serve-reward"):
        make_reward({"name": "http", "url": url, "timeout": 2.0, "retries": 2, "backoff": 0.05})
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # waited backoff, then 2 × backoff
    reward = make_reward({"name": "http", "url": url, "health_check": False, "version": "v9", **FAST})
    assert reward.version == "v9"
    with pytest.raises(RewardError, match=r"/score: connection failed"):
        reward.score(*batch)


def test_transient_faults_are_retried(scripted: Any, batch: Any) -> None:
    server = scripted([503, "drop", 429])
    reward = make_reward({"name": "http", "url": server.url, "timeout": 2.0, "retries": 3, "backoff": 0.05})
    t0 = time.perf_counter()
    res = reward.score(batch[0][:2], batch[1][:2])
    assert time.perf_counter() - t0 >= 0.05 + 0.1 + 0.2  # three backoffs: 0.05, 0.1, 0.2 s
    assert server.sizes == [2, 2, 2, 2]
    np.testing.assert_array_equal(res.score, [0.0, 0.25])


def test_persistent_5xx_gives_up(scripted: Any, batch: Any) -> None:
    server = scripted([500] * 5)
    reward = make_reward({"name": "http", "url": server.url, **FAST})
    with pytest.raises(RewardError, match=r"HTTP 500: scripted failure 500 \(gave up after 3 attempts"):
        reward.score(batch[0][:2], batch[1][:2])
    assert len(server.sizes) == 3


def test_slow_server_times_out(scripted: Any, batch: Any) -> None:
    server = scripted(["slow", "slow"])
    reward = make_reward({"name": "http", "url": server.url, "timeout": 0.2, "retries": 1, "backoff": 0.01})
    t0 = time.perf_counter()
    with pytest.raises(RewardError, match=r"no answer within the timeout of 0\.2 s \(gave up after 2"):
        reward.score(batch[0][:1], batch[1][:1])
    assert time.perf_counter() - t0 < 1.5  # did not wait for the 2 s answers


def test_client_errors_are_not_retried(scripted: Any, batch: Any) -> None:
    server = scripted([400, 413])
    reward = make_reward({"name": "http", "url": server.url, **FAST})
    with pytest.raises(RewardError, match=r"refused the request: HTTP 400: scripted failure 400$"):
        reward.score(batch[0][:1], batch[1][:1])
    with pytest.raises(RewardError, match=r"HTTP 413: .*; lower batch_size"):
        reward.score(batch[0][:1], batch[1][:1])
    assert server.sizes == [1, 1]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ("<html>oops</html>", "malformed JSON"),
        ('{"scores": [SCORES]}', "malformed JSON.*non-finite JSON number NaN"),
        ('{"scores": [' + "1e999, " * 5 + "1e999]}", r"scores\[0\] = inf is not a finite number"),
        ('{"scores": [' + "null, " * 5 + "null]}", r"scores\[0\] = None is not a finite number"),
        ('{"scores": [' + '"0.5", ' * 5 + '"0.5"]}', r"scores\[0\] = '0.5' is not a finite number"),
        ('{"scores": [' + "true, " * 5 + "true]}", r"scores\[0\] = True is not a finite number"),
        ('{"scores": [1, 2]}', "answered 2 scores for 6 images"),
        ('{"score": [1, 2, 3, 4, 5, 6]}', "answered scores=None for 6 images"),
        ("[1, 2, 3, 4, 5, 6]", "answered list, not a JSON object"),
        ({"strict": [1, 0, 1, 0, 1, 0]}, "'strict' must be null or 6 booleans"),
        ({"details": ["a"] * 6}, "'details' must be null or 6 objects"),
        ({"version": "8"}, "now answers version '8', but '7' at connection"),
    ],
)
def test_invalid_answers_are_errors_without_retry(scripted: Any, batch: Any, answer: Any, match: str) -> None:
    server = scripted([answer])
    reward = make_reward({"name": "http", "url": server.url, **FAST})
    with pytest.raises(RewardError, match=match):
        reward.score(batch[0][:6], batch[1][:6])
    assert server.sizes == [6]  # one request: a delivered answer is not retried


def test_health_answer_is_checked(scripted: Any) -> None:
    with pytest.raises(RewardError, match="/health answered malformed JSON"):
        make_reward({"name": "http", "url": scripted([], health="nope").url, **FAST})
    with pytest.raises(RewardError, match="must answer key and version strings"):
        make_reward({"name": "http", "url": scripted([], health='{"status": "ok"}').url, **FAST})


def test_null_strict_and_details_are_allowed(scripted: Any, batch: Any) -> None:
    server = scripted([{"strict": None, "details": None}])
    res = make_reward({"name": "http", "url": server.url, **FAST}).score(batch[0][:2], batch[1][:2])
    assert res.strict is None and res.details == [{}, {}]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"url": "ftp://127.0.0.1:21"}, "url must be http://host:port"),
        ({"url": "127.0.0.1:8765"}, "url must be http://host:port"),
        ({"url": "http://127.0.0.1:99999"}, "bad url"),
        ({"url": "http://h:1/score?x=1"}, "query or fragment"),
        ({"url": 8765}, "url must be a string"),
        ({"url": "http://h:1", "timeout": 0}, "timeout must be a positive number"),
        ({"url": "http://h:1", "retries": -1}, "retries must be an integer ≥ 0"),
        ({"url": "http://h:1", "backoff": float("nan")}, "backoff must be"),
        ({"url": "http://h:1", "batch_size": 0}, "batch_size must be a positive integer"),
        ({"url": "http://h:1", "health_check": False}, "pass version= when health_check is off"),
        ({"url": "http://h:1", "key": ""}, "key must be a non-empty string"),
    ],
)
def test_bad_parameters(params: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_reward({"name": "http", **params})


def test_bad_batch_is_refused_before_any_request(shapes_server: RewardServer, batch: Any) -> None:
    reward = HttpReward(shapes_server.url)
    with pytest.raises(UserError, match="one prompt per image"):
        reward.score(batch[0], batch[1][:3])
