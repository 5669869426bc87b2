"""`prompts`: the prompt set of a run, one row per prompt.

Columns:
    - `prompt_id` (`string`): unique id of the prompt within the set.
    - `prompt` (`string`): the text given to the text encoders.
    - `task` (`string`): task family, e.g. `"counting"`, `"position"` (GenEval-like sets) or
      `"free"` for open prompts; evaluation aggregates by it.
    - `spec` (`string`, nullable): JSON description a rule-based reward checks the image against
      (objects, counts, colours, positions); null for open prompts.
    - `split` (`string`): `"train"` or `"eval"`.
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare

NAME = "prompts"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("spec", pa.string(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
    ],
)
