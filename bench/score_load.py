"""Load on the score stage: the `http` reward against the reference reward server, many shards at once.

Run: `.venv/bin/python bench/score_load.py [--quick] [--shards 1,2,4,8] [--trajectories 256]
[--repeats 3] [--batch 32] [--server-concurrency 1] [--max-connections 64] [--out PATH]`.

Builds a stored iteration once (rollouts + branches datasets in a temp root: shapes-world images of
64×64 with their prompts, W + 1 = 4 boundaries per trajectory), starts `serve_forever("shapes")`
in a subprocess on 127.0.0.1 (bounded: `--max-connections`, `--server-concurrency` batches scored
at once, the default 128 MiB request cap), then for each level S runs the real score stage as the
train flow's thread runner does: S shards in S threads (`score.run_shard` over the shard's
trajectories, one shared `http` reward with its default timeout/retries), then `finalize_dataset`.
Each level runs `--repeats` times into a fresh output.

Reported per level: images/s over the stage (shards + finalize), HTTP requests and the non-200
answers among them (503 = load shed by the server, retried by the client), stage runs that failed
(a `RewardError` after the client's retries) and the error rate, and whether every score equals
the in-process `shapes` reward. Prints a table; writes `bench/results/score_load.json`. `--quick`
(128 trajectories, 2 repeats) takes well under 2 minutes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
from _common import cpu_model, start_reward_server  # noqa: E402

from tpgrpo.errors import RewardError  # noqa: E402
from tpgrpo.rewards import make_reward  # noqa: E402
from tpgrpo.schemas import encode_png, encode_tensor  # noqa: E402
from tpgrpo.stages import score  # noqa: E402
from tpgrpo.storage import finalize_dataset, read_table, write_dataset  # noqa: E402
from tpgrpo.world.scenes import sample_batch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "score_load.json"
BOUNDARIES = 4  # W + 1 with W = 3

# --- HTTP answers, counted by status (the client makes its sessions with requests.Session) ----------

STATUS: collections.Counter[int] = collections.Counter()
_STATUS_LOCK = threading.Lock()


class _CountingSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().request(*args, **kwargs)
        with _STATUS_LOCK:
            STATUS[response.status_code] += 1
        return response


requests.Session = _CountingSession  # type: ignore[misc]


def _stored_iteration(root: Path, trajectories: int) -> tuple[str, str, np.ndarray]:
    """Rollouts + branches datasets of one iteration; returns their URIs and the local scores."""
    rng = np.random.default_rng(0)
    images, prompts = sample_batch(rng, trajectories * BOUNDARIES)  # [N·(W+1), 64, 64, 3]
    n = trajectories
    tids = list(range(n))
    state = encode_tensor(torch.zeros(5, 1, 2, 2))  # [T+1, C, H, W]: unused by the score stage
    rollouts: dict[str, Any] = {
        "run_id": ["bench"] * n,
        "iteration": [0] * n,
        "batch": [t // 32 for t in tids],
        "trajectory_id": tids,
        "prompt_id": [f"p{t // 8}" for t in tids],
        "group_id": [t // 8 for t in tids],
        "prompt": [prompts[t * BOUNDARIES] for t in tids],  # one prompt per trajectory
        "seed": tids,
        "num_steps": [4] * n,
        "window_start": [0] * n,
        "window_size": [BOUNDARIES - 1] * n,
        "sampler": ["cps"] * n,
        "noise_level": [0.7] * n,
        "guidance_scale": [4.5] * n,
        "sigmas": [[1.0, 0.75, 0.5, 0.25, 0.0]] * n,
        "states": [state[0]] * n,
        "states_dtype": [state[1]] * n,
        "states_shape": [state[2]] * n,
        "ode_states": [None] * n,
        "ode_states_dtype": [None] * n,
        "ode_states_shape": [None] * n,
        "log_probs": [[-0.5, -0.4, -0.3]] * n,
        "image": [encode_png(images[t * BOUNDARIES + BOUNDARIES - 1]) for t in tids],
    }
    rows = n * BOUNDARIES
    branches = {
        "iteration": [0] * rows,
        "trajectory_id": [i // BOUNDARIES for i in range(rows)],
        "boundary": [i % BOUNDARIES for i in range(rows)],
        "grid_index": [i % BOUNDARIES for i in range(rows)],
        "image": [encode_png(images[i]) for i in range(rows)],
        "model_evals": [0] * rows,
    }
    r_uri, b_uri = str(root / "rollouts"), str(root / "branches")
    write_dataset(r_uri, "rollouts", rollouts, inputs={}, config_hash="bench")
    write_dataset(b_uri, "branches", branches, inputs={}, config_hash="bench")
    # the reward sees each branch image with its trajectory's prompt, as the stage sends it
    stage_prompts = [rollouts["prompt"][i // BOUNDARIES] for i in range(rows)]
    local = make_reward("shapes").score(images, stage_prompts).score
    return r_uri, b_uri, local


def _stage(
    url: str, batch: int, shards: int, rollouts: str, branches: str, output: str, trajectories: int
) -> tuple[float, int, int]:
    """The score stage with `shards` threads; returns (seconds, rows, failed shards)."""
    reward = make_reward({"name": "http", "url": url, "batch_size": batch})  # shared, as the flow does
    failures = [0] * shards
    stats: list[dict[str, float]] = [{} for _ in range(shards)]

    def run(s: int) -> None:
        tids = [t for t in range(trajectories) if t % shards == s]
        try:
            stats[s] = score.run_shard(
                reward,
                iteration=0,
                rollouts_uri=rollouts,
                branches_uri=branches,
                output=output,
                trajectory_ids=tids if shards > 1 else None,
                shard=s,
            )
        except RewardError:
            failures[s] = 1

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(s,)) for s in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = 0
    if not any(failures):
        rows = finalize_dataset(output, "rewards", inputs={}, config_hash="bench", shards=shards).rows
    return time.perf_counter() - started, rows, sum(failures)


def _level(
    url: str,
    args: argparse.Namespace,
    shards: int,
    rollouts: str,
    branches: str,
    local: np.ndarray,
    work: Path,
) -> dict[str, Any]:
    """`args.repeats` stage runs with `shards` shards; prints and returns the level's row."""
    images = args.trajectories * BOUNDARIES
    STATUS.clear()
    seconds: list[float] = []
    failed = wrong = 0
    for r in range(args.repeats):
        output = str(work / f"rewards-{shards}-{r}")
        took, rows, fails = _stage(url, args.batch, shards, rollouts, branches, output, args.trajectories)
        failed += fails
        if not fails:
            seconds.append(took)
            table = read_table(output, "rewards").sort_by(
                [("trajectory_id", "ascending"), ("boundary", "ascending")]
            )
            got = np.array(table.column("score").to_pylist())
            wrong += int(rows != images or not np.allclose(got, local, atol=1e-6))
        shutil.rmtree(output, ignore_errors=True)
    requests_made = sum(STATUS.values())
    non_ok = requests_made - STATUS.get(200, 0)
    mean = float(np.mean(seconds)) if seconds else float("nan")
    row = {
        "shards": shards,
        "stage_runs": args.repeats,
        "images_per_run": images,
        "stage_s_mean": mean,
        "images_per_s": images / mean if seconds else 0.0,
        "http_requests": requests_made,
        "http_non_200": non_ok,
        "http_status": {str(k): v for k, v in sorted(STATUS.items())},
        "failed_shards": failed,
        "error_rate": failed / (args.repeats * shards),
        "wrong_runs": wrong,
    }
    ok = ("yes" if not wrong else "NO") if seconds else "-"
    print(
        f"{shards:>6} {row['images_per_s']:>9.0f} {mean:>8.2f} {requests_made:>9} {non_ok:>8} "
        f"{failed:>7} {row['error_rate']:>10.3f} {ok:>9}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128 trajectories, 2 repeats (< 2 min)")
    parser.add_argument("--shards", default="1,2,4,8", help="concurrent shards per level")
    parser.add_argument("--trajectories", type=int, default=256, help="trajectories (× 4 images)")
    parser.add_argument("--repeats", type=int, default=3, help="stage runs per level")
    parser.add_argument("--batch", type=int, default=32, help="images per request (http batch_size)")
    parser.add_argument("--server-concurrency", type=int, default=1, help="batches the server scores at once")
    parser.add_argument("--max-connections", type=int, default=64, help="server connection cap")
    parser.add_argument("--out", default=str(RESULTS), help="results JSON")
    args = parser.parse_args()
    if args.quick:
        args.trajectories, args.repeats = 128, 2
    levels = [int(s) for s in args.shards.split(",")]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="score-load-"))
    rows_out: list[dict[str, Any]] = []
    # the server as configured, then with fewer connection slots than the widest level has shards:
    # the server sheds load (503) and the clients' retries with backoff absorb it
    servers = [("as configured", args.max_connections), ("tight", max(1, min(levels) * 2))]
    try:
        rollouts, branches, local = _stored_iteration(work, args.trajectories)
        images = args.trajectories * BOUNDARIES
        for label, connections in servers:
            proc, url = start_reward_server(args.server_concurrency, connections)
            try:
                print(
                    f"\nreward server {url} ({label}: max_connections {connections}, max_concurrency "
                    f"{args.server_concurrency}); {images} branch images per stage run, batch {args.batch}"
                )
                print(
                    f"{'shards':>6} {'images/s':>9} {'stage s':>8} {'requests':>9} {'non-200':>8} "
                    f"{'failed':>7} {'error rate':>10} {'scores ok':>9}"
                )
                for shards in levels:
                    row = _level(url, args, shards, rollouts, branches, local, work)
                    rows_out.append({"server": label, "max_connections": connections, **row})
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "env": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": "python bench/score_load.py" + (" --quick" if args.quick else ""),
        },
        "params": {
            "trajectories": args.trajectories,
            "boundaries": BOUNDARIES,
            "image_size": 64,
            "repeats": args.repeats,
            "batch": args.batch,
            "server": f"serve_forever('shapes') on 127.0.0.1, max_concurrency {args.server_concurrency}, "
            "max_request_bytes 128 MiB; max_connections per row",
            "client": "http reward defaults (timeout 30 s, retries 3, backoff 0.5 s), one client shared "
            "by the shards",
            "stage": "score.run_shard per shard in threads (the train flow's thread runner), then "
            "finalize_dataset",
        },
        "rows": rows_out,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
