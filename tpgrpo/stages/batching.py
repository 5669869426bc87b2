"""The model's best batch size: the number of samples per call with the highest throughput.

A small model on a CPU is near its best throughput at ~16 samples per call and gets slower with
much larger batches (cache misses); a GPU wants large batches. So the stages cut each grid level
into chunks of the best size: configured (`branch.chunk_size`), or measured once per process and
policy by timing the CFG velocity on candidate sizes 1, 2, 4, … up to the work at hand.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from tpgrpo.models.conditioning import Conditioning

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy

_MEASURED: dict[tuple[int, tuple[int, ...], bool, int], int] = {}

CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def measure_throughput(
    policy: Policy,
    batch: int,
    shape: tuple[int, int, int],
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    repeats: int = 2,
) -> float:
    """Velocity evaluations per second at `batch` samples per call (after one warm-up call)."""
    x = torch.zeros((batch, *shape), device=policy.device)  # [B, C, h, w]
    sigma = torch.full((batch,), 0.5, device=policy.device)  # [B]
    c = cond.select([0] * batch)
    u = uncond.select([0] * batch) if uncond is not None else None
    with torch.no_grad():
        policy.velocity(x, sigma, c, u, guidance_scale)
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            policy.velocity(x, sigma, c, u, guidance_scale)
        if policy.device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def best_batch(
    policy: Policy,
    shape: tuple[int, int, int],
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    configured: int | None,
    limit: int,
) -> int:
    """The chunk size to use: `configured` if set, else measured (cached per process and shape).

    Args:
        limit (`int`): the most samples a chunk can hold (no point measuring beyond the work).
    """
    if configured is not None:
        return configured
    cap = next((b for b in CANDIDATES if b >= limit), CANDIDATES[-1])  # measured range
    key = (id(policy), shape, uncond is not None and guidance_scale > 1.0, cap)
    if key not in _MEASURED:
        rates = {
            b: measure_throughput(policy, b, shape, cond, uncond, guidance_scale)
            for b in CANDIDATES
            if b <= cap
        }
        _MEASURED[key] = max(rates, key=lambda b: rates[b])
    return min(_MEASURED[key], max(1, limit))
