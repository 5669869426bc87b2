"""`rollouts`: one row per sampled trajectory of an iteration.

Columns:
    - `run_id` (`string`), `iteration` (`int32`).
    - `batch` (`int32`): the balancing scope the trajectory belongs to.
    - `trajectory_id` (`int64`): unique within an iteration.
    - `prompt_id` (`string`), `group_id` (`int32`): the GRPO group (one prompt, G trajectories).
    - `prompt` (`string`), `seed` (`int64`): what reproduces the initial noise `s_0`.
    - `num_steps` (`int32`): `T`, grid steps.
    - `window_start` (`int32`), `window_size` (`int32`): the SDE window `[w0, w0 + W)`.
    - `sampler` (`string`): `"sde"`, `"cps"` or `"dance"`; `noise_level` (`float32`): `a`;
      `guidance_scale` (`float32`): CFG scale `g`.
    - `sigmas` (`list<float32>`, `[T+1]`): the noise grid `σ_0 = 1 … σ_T = 0`.
    - `states` (`large_binary`, nullable) + `states_dtype` (`string`) + `states_shape`
      (`list<int32>`): all states `s_0 … s_T` stacked, `[T+1, C, H, W]`, raw little-endian bytes
      (see `tpgrpo.schemas.tensors`). Null after retention dropped the latents of an old
      iteration (dtype and shape stay).
    - `ode_states` (`large_binary`, nullable) + `ode_states_dtype` + `ode_states_shape`
      (nullable): for each window step `k`, the ODE-step state `s_k + (σ_{k+1} − σ_k)·v_k`,
      `[W, C, H, W]`, which saves one model evaluation per branch. Null when not recorded or
      dropped by retention.
    - `log_probs` (`list<float32>`, `[W]`): SDE log-probabilities of the window steps (element mean).
    - `image` (`binary`): PNG of the decoded final image.
"""

from __future__ import annotations

import pyarrow as pa

from tpgrpo.schemas.registry import declare, tensor_fields

NAME = "rollouts"
VERSION = 1

SCHEMA = declare(
    NAME,
    VERSION,
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("batch", pa.int32(), nullable=False),
        pa.field("trajectory_id", pa.int64(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("group_id", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("num_steps", pa.int32(), nullable=False),
        pa.field("window_start", pa.int32(), nullable=False),
        pa.field("window_size", pa.int32(), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("noise_level", pa.float32(), nullable=False),
        pa.field("guidance_scale", pa.float32(), nullable=False),
        pa.field("sigmas", pa.list_(pa.float32()), nullable=False),
        *tensor_fields("states", optional=False),
        *tensor_fields("ode_states", optional=True),
        pa.field("log_probs", pa.list_(pa.float32()), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
    ],
)
