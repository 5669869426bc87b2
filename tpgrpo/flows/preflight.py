"""Checks a run before it writes anything: bad input fails with one message and no debris.

`train` calls `preflight` before it takes the run lock, so a user mistake found here leaves the
runs root untouched (no `run.lock`, no `run.json`, no half-made run directory) and never reaches a
Prefect task (whose failure would be logged with a traceback). Everything here only reads.
"""

from __future__ import annotations

from tpgrpo.errors import ConfigError
from tpgrpo.pipeline.context import RunContext
from tpgrpo.pipeline.start import check_existing_run
from tpgrpo.stages.common import window_check
from tpgrpo.stages.prompts import check_prompts_for_reward, run_prompts
from tpgrpo.storage import validate_key


def preflight(ctx: RunContext) -> None:
    """Everything about a run that can be checked before its first byte is written.

    - the runs root: reachable, with credentials, bucket and access (S3), not a file (local);
    - the run id (already validated by `RunLayout`) and, for an existing run, the same config;
    - the device: this machine has `model.device` (and a GPU per data-parallel process);
    - the model: a local `model.path` must be a pipeline directory of `model.family` with
      safetensors weights (a hub id is left to loading);
    - the reward: built as the score stage will build it (cached per process), so an unknown
      name, bad parameters, a storage key that is no valid path component, or a remote server
      that does not answer fail now;
    - the prompt set: readable UTF-8, not empty, and scorable by the reward;
    - the SDE window on the model's grid (SPEC §2's floor), when the model is a local directory
      (a hub id's grid is checked once it is loaded, before its first rollout). This refuses to train
      a stored run whose explicit window breaks the floor; reading it (runs, audit, report) still works.

    Raises:
        UserError: the first kind of problem found (`ConfigError` lists every prompt problem,
            `StorageAccessError` names what the runs root lacks).
        RewardError: the reward could not be reached (e.g. its server is down).
    """
    from tpgrpo.models.devices import check_model_device
    from tpgrpo.models.factory import resolve_model_path
    from tpgrpo.models.pipeline import check_pipeline_dir
    from tpgrpo.storage.access import check_root

    cfg = ctx.cfg
    check_root(ctx.layout.root, ctx.storage_options)
    check_existing_run(ctx)
    check_model_device(cfg)
    check_pipeline_dir(resolve_model_path(cfg.model.path), cfg.model.family)
    validate_key(ctx.reward_key())
    rows = run_prompts(cfg)
    problems = check_prompts_for_reward(rows, cfg.reward.spec) + window_check(cfg)
    if problems:
        raise ConfigError(problems)
