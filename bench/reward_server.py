"""Load on the reference reward server: the `http` reward against `shapes` served on loopback.

Run: `.venv/bin/python bench/reward_server.py [--quick] [--clients 1,2,4,8] [--seconds 20]
[--batch 16] [--server-concurrency 1] [--max-connections 64] [--out PATH]`.

Starts `serve_forever("shapes")` in a subprocess on 127.0.0.1, then for each level N runs N
client threads in this process, each with its own `http` reward (default timeout and retries),
scoring the same batch of 64×64 shapes-world images in a loop for `--seconds`. Prints a table of
images/s, requests, errors (score calls that ended in a `RewardError` after the client's retries)
and request latency; writes `bench/results/reward_server.json`. `--quick` (4 s per level) takes
well under 2 minutes.

For scale, the same batch is also scored in-process by the `shapes` reward (no HTTP): the gap is
the protocol's cost (PNG encode + base64 + JSON on the client, the reverse on the server).
Every remote score is checked against the local one.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from _common import cpu_model, start_reward_server  # noqa: E402

from tpgrpo.errors import RewardError  # noqa: E402
from tpgrpo.rewards import make_reward  # noqa: E402
from tpgrpo.world.scenes import sample_batch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "reward_server.json"


def _level(
    url: str, clients: int, seconds: float, images: np.ndarray, prompts: list[str], want: np.ndarray
) -> dict[str, Any]:
    """Run `clients` threads for `seconds`; counts, errors and latencies of their score calls."""
    rewards: list[Any] = [
        make_reward({"name": "http", "url": url, "batch_size": len(images)}) for _ in range(clients)
    ]
    for r in rewards:  # warm-up: connections open, server caches filled
        with contextlib.suppress(RewardError):  # a refused client counts in the timed loop
            r.score(images, prompts)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    wrong = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = 0.0  # set when every thread is ready

    def work(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                res = rewards[i].score(images, prompts)
            except RewardError:
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - t0)
            wrong[i] += int(not np.array_equal(res.score, want))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for r in rewards:
        r.close()
    done = [x for per in latencies for x in per]
    calls = len(done) + sum(errors)
    return {
        "clients": clients,
        "wall_s": wall,
        "requests": calls,
        "images": len(done) * len(images),
        "errors": sum(errors),
        "error_rate": sum(errors) / calls if calls else 0.0,
        "wrong_scores": sum(wrong),
        "images_per_s": len(done) * len(images) / wall,
        "latency_p50_ms": 1000 * statistics.median(done) if done else None,
        "latency_p95_ms": 1000 * float(np.percentile(done, 95)) if done else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 s per level (< 2 min in all)")
    ap.add_argument("--clients", default="1,2,4,8", help="concurrent client levels")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per level")
    ap.add_argument("--batch", type=int, default=16, help="images per request (64×64)")
    ap.add_argument("--server-concurrency", type=int, default=1, help="the server's max_concurrency")
    ap.add_argument("--max-connections", type=int, default=64, help="the server's max_connections")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = ap.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    levels = [int(x) for x in args.clients.split(",")]

    images, prompts = sample_batch(np.random.default_rng(0), args.batch)
    local = make_reward("shapes")
    want = local.score(images, prompts).score
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < min(seconds, 3.0):
        local.score(images, prompts)
        n += 1
    local_rate = n * len(images) / (time.perf_counter() - t0)

    load_before = os.getloadavg()
    proc, url = start_reward_server(args.server_concurrency, args.max_connections)
    try:
        rows = [_level(url, c, seconds, images, prompts, want) for c in levels]
    finally:
        proc.send_signal(2)  # SIGINT: serve_forever stops cleanly
        proc.wait(timeout=10)
    load_after = os.getloadavg()

    print(
        f"http reward -> reference server (shapes, max_concurrency={args.server_concurrency}, "
        f"max_connections={args.max_connections}) on loopback; "
        f"{args.batch} images 64x64 per request, {seconds:g} s per level; {os.cpu_count()} cores "
        f"({cpu_model()}), load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    print(f"in-process shapes reward, same batch: {local_rate:,.0f} images/s")
    head = ("clients", "img/s", "requests", "errors", "err rate", "p50 ms", "p95 ms")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 8, 9, 7, 9, 8, 8), strict=True)))
    for r in rows:
        print(
            f"{r['clients']:>7} {r['images_per_s']:>8,.0f} {r['requests']:>9} {r['errors']:>7} "
            f"{r['error_rate']:>9.2%} {r['latency_p50_ms'] or 0:>8.1f} {r['latency_p95_ms'] or 0:>8.1f}"
        )
    if any(r["wrong_scores"] for r in rows):
        print("WARNING: some remote scores differed from the local reward")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    params = {
        "seconds_per_level": seconds,
        "batch": args.batch,
        "image_size": 64,
        "server_concurrency": args.server_concurrency,
        "server_max_connections": args.max_connections,
        "client": "http reward defaults (timeout 30 s, retries 3, backoff 0.5 s)",
    }
    payload = {"env": env, "params": params, "local_images_per_s": local_rate, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
