"""A run's config and location (`RunContext`), read back from a stored run (`load_run`).

Every command, flow and deployment entrypoint that reads a stored run goes through `load_run`
(the runs root resolved by `pipeline.root.resolve_root`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tpgrpo.config import Config, SpecData, load_config_data
from tpgrpo.errors import ConfigError, DataError, UserError
from tpgrpo.pipeline.cache import cached_policy, cached_reward
from tpgrpo.pipeline.root import resolve_root
from tpgrpo.storage import RunLayout, list_runs, read_run_record

if TYPE_CHECKING:
    from tpgrpo.models.policy import Policy
    from tpgrpo.rewards.base import Reward

Log = Callable[[str], None]
"""Where a step announces what it did (a Prefect logger, `typer.echo`, or `quiet`)."""


def quiet(message: str) -> None:
    """A `Log` that says nothing."""
    return None


@dataclass
class RunContext:
    """Everything a step needs: the config and where the run lives."""

    cfg: Config
    layout: RunLayout
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: Config, run_id: str, root: str | None = None) -> RunContext:
        opts = cfg.storage_options()
        return cls(cfg, RunLayout(root or cfg.storage.root, run_id, opts), opts)

    def policy(self) -> Policy:
        """The policy with a LoRA adapter (loaded once per process and model config)."""
        u = self.cfg.update
        return cached_policy(self.cfg.model.model_dump_json(), u.lora_rank, u.lora_alpha, self.cfg.seed)

    def reward(self, spec: SpecData | None = None) -> Reward:
        """The reward of `spec` (default: the config's), built once per process (loads its model:
        only tasks call this, on the machine that runs them).

        Raises:
            UserError: the built reward's key is not the one its spec declares (`reward_key`), where
                the flow planned its outputs.
        """
        from tpgrpo.rewards import check_spec

        data = self.cfg.reward.spec if spec is None else spec
        reward = cached_reward(data)
        declared = self.reward_key(data)
        if reward.key != declared:
            raise UserError(
                f"reward {check_spec(data)[0]!r} was built with key {reward.key!r}, but its spec declares "
                f"{declared!r}; a reward's key must be its `key` parameter, else its factory's default "
                "`key`, else its registered name"
            )
        return reward

    def reward_key(self, spec: SpecData | None = None) -> str:
        """The storage key of `spec`'s reward (default: the config's), from the spec alone: checks the
        name and parameters, never builds the reward (`rewards.spec_key`)."""
        from tpgrpo.rewards import spec_key

        return spec_key(self.cfg.reward.spec if spec is None else spec)


def load_run(run_id: str, root: str | None) -> RunContext:
    """The `RunContext` of a stored run, its config read back from `run.json`.

    Raises:
        UserError: no such run (lists the runs there are); `StorageAccessError` when the root cannot
            be used (no S3 credentials, endpoint unreachable, no bucket, a file).
        DataError: its `run.json` is damaged, or holds a config this version refuses.
    """
    from tpgrpo.storage.access import check_root

    base = resolve_root(root)
    layout = RunLayout(base, run_id)
    check_root(base)
    record = read_run_record(layout)
    if record is None:
        known = list_runs(base)
        hint = f"runs under {base}: {', '.join(known)}" if known else f"no runs under {base}"
        raise UserError(f"unknown run {run_id!r} ({hint}); pass --run with one of them, or --root")
    data = record["config"]
    s3 = data.get("storage", {}).get("s3", {}) if isinstance(data.get("storage"), dict) else {}
    for key, value in list(s3.items() if isinstance(s3, dict) else ()):
        if value == "<redacted>":  # credentials are never stored: the AWS environment supplies them
            s3[key] = None
    try:
        cfg = load_config_data(data)
    except ConfigError as err:
        version = record.get("code_version", "an unknown version")
        raise DataError(
            f"run {run_id!r}: {layout.run_json()} holds a config this tpgrpo refuses "
            f"({'; '.join(err.problems)}); it was written by {version}: read the run with that "
            "version, or restore run.json from a backup"
        ) from None
    return RunContext.create(cfg, run_id, base)
