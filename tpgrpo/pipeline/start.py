"""A run's start: the checks before anything is written (`preflight`), the checks only the machine
that runs the model work can make (`check_worker`), then `run.json`, the prompt set and checkpoint
0, or the check that it is the same run (`init_run`).

`train` calls `preflight` before it takes the run lock, so a user mistake found there leaves the
runs root untouched (no `run.lock`, no `run.json`, no half-made run directory) and never reaches a
Prefect task (whose failure would be logged with a traceback). `preflight` only reads, and never
loads a model or a reward model: the orchestrating process may be a CPU machine whose tasks run on
GPU workers. Those load them in their tasks; `check_worker` is the flows' first task.
"""

from __future__ import annotations

from tpgrpo.config import SpecData
from tpgrpo.errors import ConfigError, UserError
from tpgrpo.pipeline.cache import initial_adapter
from tpgrpo.pipeline.context import Log, RunContext, quiet
from tpgrpo.pipeline.lineage import stage_config_hash
from tpgrpo.stages.checkpoints import initial_state, write_checkpoint
from tpgrpo.stages.common import window_check
from tpgrpo.stages.prompts import check_prompts_for_reward, run_prompts
from tpgrpo.storage import prepare_output, read_run_record, validate_key, write_dataset, write_run_record
from tpgrpo.storage.blobs import blob_state, clear_blobs

PROMPT_COLUMNS = ("prompt_id", "prompt", "task", "spec", "split")


def check_existing_run(ctx: RunContext) -> bool:
    """A run id that exists must hold this config (same hash) to be resumed.

    Returns:
        `bool`: whether the run exists (with this config).

    Raises:
        UserError: the run exists with another config (pick another `--run-id`).
        DataError: its `run.json` is damaged.
    """
    stored = read_run_record(ctx.layout)
    if stored is not None and stored.get("config_hash") != ctx.cfg.hash():
        raise UserError(
            f"run {ctx.layout.run_id!r} already exists with a different config "
            f"(see {ctx.layout.run_json()}); use another --run-id, or the same config to resume it"
        )
    return stored is not None


def preflight(ctx: RunContext) -> None:
    """Everything about a run that can be checked before its first byte is written, in this process.

    - the runs root: reachable, with credentials, bucket and access (S3), not a file (local);
    - the run id (already validated by `RunLayout`) and, for an existing run, the same config;
    - the device, when the tasks run on this machine (`flow.tasks_run_here`): it has `model.device`
      (and a GPU per data-parallel process); a Dask cluster's workers check their own (`check_worker`);
    - the model: a local `model.path` must be a pipeline directory of `model.family` with
      safetensors weights (a hub id is left to loading);
    - the reward spec: a registered name, parameters its factory takes, and a storage key that is a
      valid path component (the reward itself is built by the tasks: `check_worker`);
    - the prompt set: readable UTF-8, not empty, and scorable by the reward;
    - the SDE window on the model's grid (SPEC §2's floor), when the model is a local directory
      (a hub id's grid is checked once it is loaded, before its first rollout). This refuses to train
      a stored run whose explicit window breaks the floor; reading it (runs, audit, report) still works.

    Raises:
        UserError: the first kind of problem found (`ConfigError` lists every prompt problem,
            `StorageAccessError` names what the runs root lacks).
    """
    from tpgrpo.models.devices import check_model_device
    from tpgrpo.models.factory import resolve_model_path
    from tpgrpo.models.pipeline import check_pipeline_dir
    from tpgrpo.storage.access import check_root

    cfg = ctx.cfg
    check_root(ctx.layout.root, ctx.storage_options)
    check_existing_run(ctx)
    if cfg.flow.tasks_run_here:
        check_model_device(cfg)
    check_pipeline_dir(resolve_model_path(cfg.model.path), cfg.model.family)
    validate_key(ctx.reward_key())
    rows = run_prompts(cfg)
    problems = check_prompts_for_reward(rows, cfg.reward.spec) + window_check(cfg)
    if problems:
        raise ConfigError(problems)


def check_worker(ctx: RunContext, spec: SpecData | None = None, *, model: bool = True) -> str:
    """What only the machine that runs the model work can check, before any of it: the flows run
    this as their first task, on their task runner (a GPU worker on a Dask cluster).

    - the device (with `model`): this machine has `model.device` (and a GPU per data-parallel process);
    - the reward of `spec` (default: the config's) builds here: its weights load on its device, its
      server answers, its parameter values are valid, and it has the key the flow planned with.
      It stays cached for the tasks that score on this worker.

    Returns:
        `str`: the reward's key.

    Raises:
        UserError: a device this machine lacks, or a reward that does not build.
        RewardError: the reward could not be reached (e.g. its server is down).
    """
    from tpgrpo.models.devices import check_model_device

    if model:
        check_model_device(ctx.cfg)
    return str(ctx.reward(spec).key)


def init_run(ctx: RunContext, log: Log = quiet) -> None:
    """Create the run (run.json, prompts, checkpoint 0) or check that it is the same run.

    Raises:
        UserError: the run id exists with another config (pick another `--run-id`).
        ConfigError: the prompt set is unreadable, the reward cannot score its prompts, or the SDE
            window breaks SPEC §2's floor on the model's grid (a new run is not created then).
    """
    cfg, layout, opts = ctx.cfg, ctx.layout, ctx.storage_options
    if not check_existing_run(ctx):
        rows = run_prompts(cfg)
        problems = check_prompts_for_reward(rows, cfg.reward.spec) + window_check(cfg)
        if problems:
            raise ConfigError(problems)
        write_run_record(layout, cfg.public_dict(), cfg.hash())
        log(f"created run {layout.run_id} at {layout.run_dir}")
    prompts_hash = stage_config_hash(cfg, "prompts")
    decision = prepare_output(
        layout.prompts(), inputs={}, config_hash=prompts_hash, schema_name="prompts", storage_options=opts
    )
    if decision == "write":
        rows = run_prompts(cfg)
        cols = {k: [r[k] for r in rows] for k in PROMPT_COLUMNS}
        write_dataset(
            layout.prompts(), "prompts", cols, inputs={}, config_hash=prompts_hash, storage_options=opts
        )
    ckpt0 = layout.checkpoint(0)
    state = blob_state(ckpt0, opts)
    if state != "done":
        from tpgrpo.models.lora import adapter_from_bytes

        if state == "debris":
            clear_blobs(ckpt0, opts)
        policy = ctx.policy()
        adapter_from_bytes(policy.transformer, initial_adapter(policy))
        optimizer, ema, train_state = initial_state(cfg, policy)
        write_checkpoint(
            ckpt0,
            policy,
            optimizer,
            ema,
            train_state,
            inputs={},
            config_hash=stage_config_hash(cfg, "update"),
            storage_options=opts,
        )
        log("wrote the initial adapter (checkpoint 0)")
