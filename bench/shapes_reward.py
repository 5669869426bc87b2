"""Throughput of the `shapes` and `shapes_pref` rewards (and the scene generator) on one CPU core.

Run: `.venv/bin/python bench/shapes_reward.py [--n 4096] [--repeats 5]`. Pins the process to one
core and one BLAS/OpenMP/torch thread, scores batches of 64×64 images and prints a table of images
per second (best of the repeats, and the median); writes `bench/results/shapes_reward.json`.

Cases, for each reward: clean ground-truth renders; "soft" renders (Gaussian blur σ = 1 px plus
N(0, 8) noise, roughly what a small VAE decoder returns); uniform noise (the worst case for the
component count). Also `quality()` alone and the generator `sample_batch` for comparison. The
two rewards are timed in the same process on the same images, interleaved case by case.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from _common import cpu_model  # noqa: E402
from scipy import ndimage  # noqa: E402

from tpgrpo.rewards import make_reward  # noqa: E402
from tpgrpo.rewards.shapes import quality  # noqa: E402
from tpgrpo.rewards.shapes_detector import color_table  # noqa: E402
from tpgrpo.world.scenes import sample_batch  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "shapes_reward.json"


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="images per batch")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per case")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    try:  # the rewards do not use torch; pinned anyway so that nothing else takes a second thread
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass

    rng = np.random.default_rng(0)
    reward, pref = make_reward("shapes"), make_reward("shapes_pref")
    color_table()  # built once per process (a fraction of a second); not part of the throughput
    clean, prompts = sample_batch(rng, args.n)
    soft = ndimage.gaussian_filter(clean.astype(np.float64), (0, 1.0, 1.0, 0)) + rng.normal(0, 8, clean.shape)
    soft_u8 = np.clip(np.rint(soft), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, clean.shape, dtype=np.uint8)
    reward.score(clean[:64], prompts[:64])  # warm-up
    pref.score(clean[:64], prompts[:64])

    cases: list[tuple[str, Callable[[], object]]] = [
        ("shapes: clean renders", lambda: reward.score(clean, prompts)),
        ("shapes_pref: clean renders", lambda: pref.score(clean, prompts)),
        ("shapes: soft renders", lambda: reward.score(soft_u8, prompts)),
        ("shapes_pref: soft renders", lambda: pref.score(soft_u8, prompts)),
        ("shapes: uniform noise", lambda: reward.score(noise, prompts)),
        ("shapes_pref: uniform noise", lambda: pref.score(noise, prompts)),
        ("quality(): soft renders", lambda: quality(soft_u8)),
        ("generator: sample_batch", lambda: sample_batch(np.random.default_rng(1), args.n)),
    ]
    checks = {
        "clean_mean_score": float(reward.score(clean, prompts).score.mean()),
        "soft_mean_score": float(reward.score(soft_u8, prompts).score.mean()),
        "noise_mean_score": float(reward.score(noise, prompts).score.mean()),
        "pref_clean_mean_score": float(pref.score(clean, prompts).score.mean()),
        "pref_soft_mean_score": float(pref.score(soft_u8, prompts).score.mean()),
        "pref_noise_mean_score": float(pref.score(noise, prompts).score.mean()),
    }
    rows = []
    for name, fn in cases:
        times = _time(fn, args.repeats)
        rows.append(
            {
                "case": name,
                "images": args.n,
                "best_s": min(times),
                "median_s": statistics.median(times),
                "images_per_s_best": args.n / min(times),
                "images_per_s_median": args.n / statistics.median(times),
            }
        )

    print(f"shapes rewards, 1 core ({cpu_model()}), {args.n} images 64x64, best/median of {args.repeats}")
    print(f"{'case':<30} {'img/s (best)':>14} {'img/s (median)':>15}")
    for r in rows:
        print(f"{r['case']:<30} {r['images_per_s_best']:>14,.0f} {r['images_per_s_median']:>15,.0f}")
    print("mean scores: " + ", ".join(f"{k} {v:.4f}" for k, v in checks.items()))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "cpu": cpu_model(),
        "cores_used": 1,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    RESULTS.write_text(json.dumps({"env": env, "checks": checks, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
