"""`eval`: one row per (evaluation prompt, seed) of one checkpoint and one reward.

Columns:
    - `checkpoint` (`string`): e.g. `"base"`, `"iter=0004"`.
    - `prompt_id` (`string`), `task` (`string`), `seed` (`int64`).
    - `image` (`binary`): PNG of the pure-ODE sample.
    - `reward_key` (`string`), `score` (`float64`).
    - `strict` (`bool`, nullable): all-or-nothing verdict where the reward has one.
    - `details` (`string`, nullable): JSON explanation from the reward.
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "eval"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("checkpoint", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("reward_key", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("strict", pa.bool_(), nullable=True),
        pa.field("details", pa.string(), nullable=True),
    ],
)
