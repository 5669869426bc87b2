"""`rewards`: one row per (trajectory, boundary `j`): the score `ρ_j` of one reward model.

Columns:
    - `iteration` (`int32`), `trajectory_id` (`int64`), `boundary` (`int32`).
    - `reward_key` (`string`): the reward's key in the run layout.
    - `score` (`float64`).
    - `strict` (`bool`, nullable): all-or-nothing verdict where the reward has one (GenEval);
      null otherwise.
    - `details` (`string`, nullable): JSON with the reward's explanation (detections, OCR text).
    - `reward_model` (`string`, nullable; added column): id and version of the reward model,
      e.g. `"pickscore@<revision>"`.
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "rewards"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("trajectory_id", pa.int64(), nullable=False),
        pa.field("boundary", pa.int32(), nullable=False),
        pa.field("reward_key", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("strict", pa.bool_(), nullable=True),
        pa.field("details", pa.string(), nullable=True),
        pa.field("reward_model", pa.string(), nullable=True),
    ],
)
