"""`updates`: one row per optimizer step of an iteration's policy update.

Columns:
    - `iteration` (`int32`), `optimizer_step` (`int64`, global across the run), `epoch` (`int32`).
    - `samples` (`int64`): (trajectory, step) samples in the optimizer step.
    - `loss`, `policy_loss`, `kl`, `clip_frac`, `approx_kl`, `ratio_mean`, `grad_norm`, `lr`
      (`float64`): means over the step's micro-batches (`grad_norm` before clipping).
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "updates"
VERSION = 1

_METRICS = ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm", "lr")

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("optimizer_step", pa.int64(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("samples", pa.int64(), nullable=False),
        *(pa.field(name, pa.float64(), nullable=False) for name in _METRICS),
    ],
)
