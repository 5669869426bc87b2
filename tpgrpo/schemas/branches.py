"""`branches`: one row per (trajectory, window boundary `j`): the ODE completion `C(s_{w0+j})`.

Columns:
    - `iteration` (`int32`), `trajectory_id` (`int64`).
    - `boundary` (`int32`): `j`, `0 … W` (SPEC.md §4).
    - `grid_index` (`int32`): grid index `k = w0 + j` the completion starts from.
    - `image` (`binary`): PNG of the decoded completion.
    - `model_evals` (`int32`): model evaluations spent on this completion (0 when reused, e.g.
      the final image at `j = W`).
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "branches"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("trajectory_id", pa.int64(), nullable=False),
        pa.field("boundary", pa.int32(), nullable=False),
        pa.field("grid_index", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("model_evals", pa.int32(), nullable=False),
    ],
)
