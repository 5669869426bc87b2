"""Benchmark: rollouts dataset write/read through tpgrpo.storage vs. raw disk speed, same run.

Writes a rollouts dataset of SD3.5-size latents (states [11, 16, 64, 64] and, by default,
ode_states [10, 16, 64, 64] per trajectory) through `DatasetWriter` + `finalize_dataset`, reads it
back with `read_table` and `iter_batches`, and compares with writing the same number of bytes to a
plain file (+ fsync) and reading them back. Before every timed read the page cache of the files
is dropped with `posix_fadvise(DONTNEED)`, so both reads come from the disk (or whatever the
hypervisor caches below it). The raw read is measured single-threaded (`readinto`) and with 4
threads (`preadv` of 4 ranges), each into a fresh buffer of the file's size (as `read_table`
must allocate its result), and `read_table` is compared with the faster of the two; streaming
(`iter_batches`) is compared with a chunked raw read into one reused buffer.
Raw and dataset measurements alternate within each repeat; the median over repeats is reported.
Target: dataset ≥ 0.5 × raw for write and read.

    .venv/bin/python bench/storage_io.py            # 256 trajectories, float32 + bfloat16, 3 repeats
    .venv/bin/python bench/storage_io.py --quick    # 64 trajectories, 2 repeats (< 2 minutes)

Prints a table and writes bench/results/storage_io.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from tpgrpo.schemas import encode_png, encode_tensor, schema_for
from tpgrpo.storage import DatasetWriter, finalize_dataset, iter_batches, read_manifest, read_table
from tpgrpo.storage.conform import conform

LATENT = (16, 64, 64)  # SD3.5 latent at 512 px: [C, H, W]
STEPS = 10  # T: 11 states s_0 … s_T
WINDOW = 10  # W: ode_states [W, C, H, W]
CHUNK = 16 << 20
RESULTS = Path(__file__).parent / "results" / "storage_io.json"


def make_table(trajectories: int, dtype: torch.dtype, with_ode: bool, seed: int = 0) -> pa.Table:
    """Rollout rows with random latents (not compressible, like real ones)."""
    generator = torch.Generator().manual_seed(seed)
    image = encode_png(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    states, ode = [], []
    for _ in range(trajectories):
        states.append(encode_tensor(torch.randn(STEPS + 1, *LATENT, generator=generator).to(dtype)))
        if with_ode:
            ode.append(encode_tensor(torch.randn(WINDOW, *LATENT, generator=generator).to(dtype)))
    n = trajectories
    rows: dict[str, Any] = {
        "run_id": ["bench"] * n,
        "iteration": [0] * n,
        "batch": [0] * n,
        "trajectory_id": list(range(n)),
        "prompt_id": [f"p{i // 24}" for i in range(n)],
        "group_id": [i // 24 for i in range(n)],
        "prompt": ["a photo of three red circles"] * n,
        "seed": list(range(n)),
        "num_steps": [STEPS] * n,
        "window_start": [0] * n,
        "window_size": [WINDOW] * n,
        "sampler": ["cps"] * n,
        "noise_level": [0.7] * n,
        "guidance_scale": [4.5] * n,
        "sigmas": [np.linspace(1, 0, STEPS + 1, dtype=np.float32).tolist()] * n,
        "states": [s[0] for s in states],
        "states_dtype": [s[1] for s in states],
        "states_shape": [s[2] for s in states],
        "log_probs": [[-1.0] * WINDOW] * n,
        "image": [image] * n,
    }
    if with_ode:
        rows.update(
            ode_states=[o[0] for o in ode],
            ode_states_dtype=[o[1] for o in ode],
            ode_states_shape=[o[2] for o in ode],
        )
    return conform(rows, schema_for("rollouts"))


def drop_cache(paths: list[Path]) -> None:
    """Evicts the files' pages from the page cache (they are clean: written and fsynced)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def raw_write(path: Path, payload: memoryview) -> None:
    with open(path, "wb", buffering=0) as f:
        for offset in range(0, len(payload), CHUNK):
            f.write(payload[offset : offset + CHUNK])
        os.fsync(f.fileno())


def raw_read_parallel(path: Path, size: int, threads: int = 4) -> int:
    """Reads `threads` contiguous ranges concurrently with `preadv` (what pyarrow's reader can do)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    try:
        step = -(-size // threads)

        def read_range(start: int) -> int:
            done, end = start, min(size, start + step)
            while done < end:
                n = os.preadv(fd, [view[done : min(end, done + CHUNK)]], done)
                if n <= 0:
                    break
                done += n
            return done - start

        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(read_range, range(0, size, step)))
    finally:
        os.close(fd)


def raw_stream(path: Path, size: int) -> int:
    """Reads the file in chunks into one reused buffer: the baseline for streaming readers."""
    view = memoryview(bytearray(CHUNK))
    done = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            done += n
    return done


def raw_read(path: Path, size: int) -> int:
    buffer = bytearray(size)  # a reader needs memory for what it reads: allocation is timed too
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < size:
            n = f.readinto(view[done:])
            if not n:
                break
            done += n
    return done


def dataset_write(uri: str, table: pa.Table) -> int:
    with DatasetWriter(uri, "rollouts") as writer:
        writer.write(table)
    return finalize_dataset(uri, "rollouts", inputs={}, config_hash="bench", shards=1).total_bytes


def stream(uri: str) -> int:
    return sum(batch.num_rows for batch in iter_batches(uri, "rollouts"))


def bench_dtype(
    workdir: Path, trajectories: int, dtype: torch.dtype, with_ode: bool, repeats: int
) -> dict[str, Any]:
    table = make_table(trajectories, dtype, with_ode)
    uri = str(workdir / f"rollouts-{dtype}".replace("torch.", ""))
    size = dataset_write(uri, table)  # warm-up; also gives the byte count the raw file gets
    payload = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)  # incompressible
    raw = workdir / "raw.bin"
    keys = ("raw_write", "write", "raw_read_1", "raw_read_4", "read", "raw_stream", "stream")
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(repeats):
        times["raw_write"].append(timed(lambda: raw_write(raw, memoryview(payload)))[0])
        shutil.rmtree(uri)
        times["write"].append(timed(lambda: dataset_write(uri, table))[0])
        parts = [Path(uri) / p.path for p in read_manifest(uri).parts]
        for key, reader in (("raw_read_1", raw_read), ("raw_read_4", raw_read_parallel)):
            drop_cache([raw])
            seconds, n = timed(lambda reader=reader: reader(raw, size))
            assert n == size
            times[key].append(seconds)
        drop_cache(parts)
        seconds, result = timed(lambda: read_table(uri, "rollouts"))
        assert result.num_rows == trajectories
        del result
        times["read"].append(seconds)
        drop_cache([raw])
        seconds, n = timed(lambda: raw_stream(raw, size))
        assert n == size
        times["raw_stream"].append(seconds)
        drop_cache(parts)
        seconds, rows = timed(lambda: stream(uri))
        assert rows == trajectories
        times["stream"].append(seconds)
    raw.unlink()
    shutil.rmtree(uri)
    median = {k: statistics.median(v) for k, v in times.items()}
    mbps = {k: size / 1e6 / v for k, v in median.items()}
    mbps["raw_read"] = max(mbps["raw_read_1"], mbps["raw_read_4"])  # compare with the faster raw read
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "trajectories": trajectories,
        "bytes": size,
        "arrow_bytes": table.nbytes,
        "seconds": times,
        "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
        "ratio": {
            "write": round(mbps["write"] / mbps["raw_write"], 3),
            "read": round(mbps["read"] / mbps["raw_read"], 3),
            "stream": round(mbps["stream"] / mbps["raw_stream"], 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 trajectories, 2 repeats")
    parser.add_argument("--trajectories", type=int, default=None, help="default 256 (64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--no-ode", action="store_true", help="leave ode_states out (states only)")
    parser.add_argument(
        "--dir", default=None, help="scratch directory on the disk to measure (default: $TMPDIR)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    trajectories = args.trajectories or (64 if args.quick else 256)
    repeats = args.repeats or (2 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="tpgrpo-bench-", dir=args.dir))
    results = []
    try:
        for name in args.dtypes.split(","):
            results.append(bench_dtype(workdir, trajectories, getattr(torch, name), not args.no_ode, repeats))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    columns = ["dtype", "MB", "raw w", "write", "ratio", "raw r", "read", "ratio", "raw s", "stream", "ratio"]
    print(" ".join(f"{c:>8}" for c in columns) + f"   (MB/s, median of {repeats})")
    for r in results:
        m, q = r["mb_per_s"], r["ratio"]
        cells = [r["dtype"], f"{r['bytes'] / 1e6:.0f}", f"{m['raw_write']:.0f}", f"{m['write']:.0f}"]
        cells += [f"{q['write']:.2f}", f"{m['raw_read']:.0f}", f"{m['read']:.0f}", f"{q['read']:.2f}"]
        cells += [f"{m['raw_stream']:.0f}", f"{m['stream']:.0f}", f"{q['stream']:.2f}"]
        print(" ".join(f"{c:>8}" for c in cells))
    report = {
        "benchmark": "storage_io",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "note": "shared machine; raw and dataset runs alternate, medians reported",
        },
        "config": {
            "trajectories": trajectories,
            "repeats": repeats,
            "latent": list(LATENT),
            "states": STEPS + 1,
            "ode_states": 0 if args.no_ode else WINDOW,
            "quick": args.quick,
        },
        "results": results,
        "target_ratio": 0.5,
        "meets_target": all(min(r["ratio"]["write"], r["ratio"]["read"]) >= 0.5 for r in results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
