"""`annotations`: one row per (trajectory, trained step `j`) for one reward and reward mode.

Columns (SPEC.md §4–6):
    - `iteration` (`int32`), `trajectory_id` (`int64`), `group_id` (`int32`).
    - `batch` (`int32`): balancing scope.
    - `step` (`int32`): trained step `j`, `0 … W−1`; `grid_index` (`int32`): `w0 + j`.
    - `mode` (`string`): `flow_grpo`, `incremental`, `tp` or `tp_constrained`.
    - `increment` (`float64`): `d_j = ρ_{j+1} − ρ_j`.
    - `aggregated` (`float64`): `r_agg_j = ρ_W − ρ_j`.
    - `turning_point` (`bool`): detected as a turning point.
    - `kept` (`bool`): still a turning point after balancing.
    - `step_reward` (`float64`): the reward the step is trained with.
    - `advantage` (`float64`): group-normalised, clipped advantage of the step.
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "annotations"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("trajectory_id", pa.int64(), nullable=False),
        pa.field("group_id", pa.int32(), nullable=False),
        pa.field("batch", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("grid_index", pa.int32(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("increment", pa.float64(), nullable=False),
        pa.field("aggregated", pa.float64(), nullable=False),
        pa.field("turning_point", pa.bool_(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("step_reward", pa.float64(), nullable=False),
        pa.field("advantage", pa.float64(), nullable=False),
    ],
)
