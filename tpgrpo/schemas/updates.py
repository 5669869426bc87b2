"""`updates`: one row per optimizer step of an iteration's policy update.

Columns:
    - `iteration` (`int32`), `optimizer_step` (`int64`, global across the run), `epoch` (`int32`).
    - `samples` (`int64`): (trajectory, step) samples in the optimizer step.
    - `loss`, `policy_loss`, `kl`, `clip_frac`, `approx_kl`, `ratio_mean`, `grad_norm`, `lr`
      (`float64`): means over the step's transitions (`grad_norm` before clipping).
    - Per trained step `j` of the window (`list<float64>`, `[W]`; null in rows read from a v1 dataset):
      - `grad_norm_by_step`: L2 norm of the gradient of step `j`'s part of the loss (its transitions'
        share of the mean loss) w.r.t. the trainable adapter weights, before clipping. The parts sum
        to the step's gradient, so `Σ_j grad_norm_by_step[j]²` is how the squared gradient splits
        over steps (up to cross terms).
      - `clip_frac_by_step`: fraction of step `j`'s transitions whose ratio was clipped.
      - `adv_abs_by_step`: mean |advantage| of step `j`'s transitions.
      - `adv_nonzero_by_step`: share of step `j`'s transitions with a non-zero advantage.

Version 2 added the four per-step columns; version 1 datasets (runs written before) still read,
with those columns null (`READABLE`).
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "updates"
VERSION = 2

_METRICS = ("loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm", "lr")
BY_STEP = ("grad_norm_by_step", "clip_frac_by_step", "adv_abs_by_step", "adv_nonzero_by_step")
"""The per-trained-step list columns (added in version 2)."""

_V1_FIELDS = [
    pa.field("iteration", pa.int32(), nullable=False),
    pa.field("optimizer_step", pa.int64(), nullable=False),
    pa.field("epoch", pa.int32(), nullable=False),
    pa.field("samples", pa.int64(), nullable=False),
    *(pa.field(name, pa.float64(), nullable=False) for name in _METRICS),
]

SCHEMA = declare(
    NAME,
    VERSION,
    [*_V1_FIELDS, *(pa.field(name, pa.list_(pa.float64()), nullable=True) for name in BY_STEP)],
)

READABLE: dict[int, pa.Schema] = {1: declare(NAME, 1, _V1_FIELDS)}
"""Older versions this code still reads (and resumes from): read with the columns they lack as nulls."""
