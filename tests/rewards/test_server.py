"""The reference reward server: protocol, validation (400/404/411/413), reward failures (500),
bounded concurrency and connections (503), timeouts, any spec, and `serve_forever` as a process."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tpgrpo.errors import RewardError, UserError
from tpgrpo.rewards import REWARDS, RewardResult, make_reward
from tpgrpo.rewards.server import RewardServer, serve
from tpgrpo.rewards.wire import encode_image
from tpgrpo.world.scenes import sample_batch


class FakeReward:
    """A reward for server tests: `mode` "ok" (score = mean pixel / 255), "slow" (sleeps `delay`),
    "fail" (raises `RewardError`), "nan_details" (details that are not JSON)."""

    def __init__(self, mode: str = "ok", delay: float = 0.2) -> None:
        self.key, self.version = "fake", "3"
        self.mode, self.delay = mode, delay
        self.active = self.max_active = 0
        self.lock = threading.Lock()

    def score(self, images: np.ndarray, prompts: Sequence[str]) -> RewardResult:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "slow":
                time.sleep(self.delay)
            if self.mode == "fail":
                raise RewardError("model exploded")
            details = [{"x": float("nan")} if self.mode == "nan_details" else {} for _ in prompts]
            return RewardResult(images.reshape(len(images), -1).mean(1) / 255, None, details)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REWARDS, "fake", FakeReward)


@pytest.fixture
def servers() -> Iterator[list[RewardServer]]:
    started: list[RewardServer] = []
    yield started
    for server in started:
        server.shutdown()


@pytest.fixture(scope="module")
def shapes_server() -> Iterator[RewardServer]:
    server = serve("shapes")
    yield server
    server.shutdown()


def _body(images: np.ndarray, prompts: list[str]) -> dict[str, Any]:
    return {"prompts": prompts, "images": [encode_image(im) for im in images]}


def _png_b64(shape: tuple[int, int, int]) -> str:
    return encode_image(np.zeros(shape, dtype=np.uint8))


def test_health_and_paths(shapes_server: RewardServer) -> None:
    assert shapes_server.server_address[0] == "127.0.0.1"  # loopback unless asked otherwise
    health = requests.get(shapes_server.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and (health["key"], health["version"]) == ("shapes", "1")
    assert health["max_request_bytes"] == 128 * 2**20
    for method, path in [("GET", "/score"), ("POST", "/health"), ("POST", "/")]:
        answer = requests.request(method, shapes_server.url + path, data=b"{}", timeout=5)
        assert answer.status_code == 404 and "no such path" in answer.json()["error"]


def test_scores_a_batch(shapes_server: RewardServer) -> None:
    images, prompts = sample_batch(np.random.default_rng(0), 5)
    answer = requests.post(shapes_server.url + "/score", json=_body(images, prompts), timeout=10)
    assert answer.status_code == 200
    data = answer.json()
    want = make_reward("shapes").score(images, prompts)
    assert data["scores"] == want.score.tolist() and data["strict"] == want.strict.tolist()  # type: ignore[union-attr]
    assert data["details"] == json.loads(json.dumps(want.details))
    assert (data["key"], data["version"]) == ("shapes", "1")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "the body is not JSON"),
        (b'{"prompts": [NaN]}', "non-finite JSON number NaN"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"prompts": "a photo of a circle", "images": []}', "'prompts' must be a list of strings"),
        (b'{"prompts": ["a"], "images": []}', r"one per prompt \(1\)"),
        (b'{"prompts": ["a"], "images": [3]}', r"images\[0\] must be a base64 PNG string"),
        (b'{"prompts": ["a"], "images": ["***"]}', r"images\[0\] is not valid base64"),
        (b'{"prompts": ["a"], "images": ["' + base64.b64encode(b"GIF89a...") + b'"]}', "not a readable PNG"),
        (
            json.dumps(
                {"prompts": ["a", "b"], "images": [_png_b64((8, 8, 3)), _png_b64((8, 9, 3))]}
            ).encode(),
            r"images\[1\] is \(8, 9\), images\[0\] \(8, 8\): one size per batch",
        ),
        (
            json.dumps({"prompts": ["hello world"], "images": [_png_b64((64, 64, 3))]}).encode(),
            "hello world",  # the reward's own UserError: not a prompt of the shapes grammar
        ),
    ],
)
def test_garbage_is_400(shapes_server: RewardServer, body: bytes, match: str) -> None:
    answer = requests.post(shapes_server.url + "/score", data=body, timeout=5)
    assert answer.status_code == 400
    assert re.search(match, answer.json()["error"]), answer.json()


def test_grey_and_rgba_pngs_are_converted(shapes_server: RewardServer) -> None:
    items = []
    for mode in ("L", "RGBA"):
        buffer = io.BytesIO()
        Image.new(mode, (64, 64)).save(buffer, format="PNG")
        items.append(base64.b64encode(buffer.getvalue()).decode())
    answer = requests.post(
        shapes_server.url + "/score", json={"prompts": ["a photo of a circle"] * 2, "images": items}
    )
    assert answer.status_code == 200 and answer.json()["scores"] == [0.0, 0.0]


def test_size_limits(servers: list[RewardServer]) -> None:
    server = serve("shapes", max_request_bytes=2000, max_image_pixels=32 * 32)
    servers.append(server)
    big = _body(np.zeros((4, 64, 64, 3), dtype=np.uint8), ["a photo of a circle"] * 4)
    answer = requests.post(server.url + "/score", json={**big, "pad": "x" * 3000}, timeout=5)
    assert answer.status_code == 413 and "exceeds the limit of 2000" in answer.json()["error"]
    assert answer.headers["Connection"] == "close"
    one = _body(np.zeros((1, 64, 64, 3), dtype=np.uint8), ["a photo of a circle"])  # small enough in bytes
    answer = requests.post(server.url + "/score", json=one, timeout=5)
    assert answer.status_code == 400 and "64×64 pixels, more than the limit 1024" in answer.json()["error"]
    with socket.create_connection(
        ("127.0.0.1", server.server_address[1]), timeout=5
    ) as s:  # no Content-Length
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 411")
    remote = make_reward({"name": "http", "url": server.url, "retries": 0, "batch_size": 4})
    images, prompts = sample_batch(np.random.default_rng(0), 4)
    with pytest.raises(RewardError, match=r"HTTP 413: .*lower batch_size"):
        remote.score(images, prompts)


def test_reward_failures_are_500(fake: None, servers: list[RewardServer]) -> None:
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    for mode, match in [
        ("fail", "reward 'fake' failed: RewardError: model exploded"),
        ("nan_details", "not valid JSON"),
    ]:
        server = serve({"name": "fake", "mode": mode})
        servers.append(server)
        answer = requests.post(server.url + "/score", json=_body(images, ["a", "b"]), timeout=5)
        assert answer.status_code == 500 and match in answer.json()["error"]
        client = make_reward({"name": "http", "url": server.url, "retries": 1, "backoff": 0.01})
        with pytest.raises(RewardError, match=r"HTTP 500: .*gave up after 2 attempts"):
            client.score(images, ["a", "b"])


def test_concurrency_is_bounded(fake: None, servers: list[RewardServer]) -> None:
    server = serve({"name": "fake", "mode": "slow", "delay": 0.3}, max_concurrency=2, queue_timeout=10)
    servers.append(server)
    body = _body(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a"])
    statuses: list[int] = []

    def post() -> None:
        statuses.append(requests.post(server.url + "/score", json=body, timeout=10).status_code)

    threads = [threading.Thread(target=post) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 5
    reward = server.reward
    assert isinstance(reward, FakeReward) and reward.max_active == 2


def test_a_full_queue_answers_503(fake: None, servers: list[RewardServer]) -> None:
    server = serve({"name": "fake", "mode": "slow", "delay": 1.0}, max_concurrency=1, queue_timeout=0.05)
    servers.append(server)
    body = _body(np.zeros((1, 8, 8, 3), dtype=np.uint8), ["a"])
    answers: list[requests.Response] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(requests.post(server.url + "/score", json=body, timeout=10))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200, 503]
    busy = next(a for a in answers if a.status_code == 503)
    assert "no scoring slot within 0.05 s" in busy.json()["error"] and busy.headers["Retry-After"] == "1"


def test_connections_are_bounded_and_idle_ones_time_out(servers: list[RewardServer]) -> None:
    server = serve("shapes", max_connections=1, request_timeout=1.0)
    servers.append(server)
    idle = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)  # holds the only slot
    time.sleep(0.05)
    answer = requests.get(server.url + "/health", timeout=5)
    assert answer.status_code == 503 and "too many connections" in answer.json()["error"]
    assert idle.recv(10) == b""  # closed by the server after request_timeout of silence
    idle.close()
    deadline = time.monotonic() + 5
    while requests.get(server.url + "/health", timeout=5).status_code != 200:  # the slot comes back
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_connections_rotate_at_capacity(servers: list[RewardServer]) -> None:
    server = serve("shapes", max_connections=1)
    servers.append(server)
    images, prompts = sample_batch(np.random.default_rng(2), 2)
    # short retries (the slot frees a moment after the answer), far shorter than request_timeout:
    # a kept-alive connection of `a` holding the only slot would make `b` fail
    params = {"name": "http", "url": server.url, "retries": 3, "backoff": 0.02}
    a, b = make_reward(params), make_reward(params)
    for _ in range(3):
        np.testing.assert_array_equal(a.score(images, prompts).score, b.score(images, prompts).score)
    assert requests.get(server.url + "/health", timeout=5).headers["Connection"] == "close"


def test_hosts_any_spec(servers: list[RewardServer]) -> None:
    spec = {
        "name": "weighted",
        "components": [{"spec": "shapes", "weight": 0.5}, {"spec": "jpeg", "weight": 0.1}],
    }
    server = serve(spec)
    servers.append(server)
    images, prompts = sample_batch(np.random.default_rng(1), 6)
    remote = make_reward({"name": "http", "url": server.url, "key": "remote"})
    assert remote.version.startswith("weighted@1:0.5*shapes@1+0.1*jpeg@1:q95")
    local = make_reward(spec).score(images, prompts)
    got = remote.score(images, prompts)
    np.testing.assert_array_equal(got.score, local.score)
    assert got.strict is None and got.details == json.loads(json.dumps(local.details))


def test_bad_server_arguments(shapes_server: RewardServer) -> None:
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        serve("nope")
    with pytest.raises(UserError, match="max_concurrency must be a positive integer"):
        serve("shapes", max_concurrency=0)
    with pytest.raises(UserError, match="queue_timeout must be a positive number"):
        serve("shapes", queue_timeout=-1)
    with pytest.raises(UserError, match=r"cannot listen on 127\.0\.0\.1:"):
        serve("shapes", port=shapes_server.server_address[1])


def test_shutdown_is_idempotent_and_final() -> None:
    server = serve("jpeg")
    url = server.url
    server.shutdown()
    server.shutdown()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=2)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_forever_runs_until_stopped(stop: signal.Signals) -> None:
    code = "from tpgrpo.rewards.server import serve_forever as f; f({'name': 'jpeg', 'scale': 500}, port=0)"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a background job inherits an ignored SIGINT; the child gets the default back, as a terminal would give
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving reward 'jpeg' version '1:q95:s500:"), line
        url = line.rsplit(" at ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/health", timeout=5).json()["key"] == "jpeg"
        proc.send_signal(stop)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "reward server stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
