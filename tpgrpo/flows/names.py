"""The names a run's flow runs and task runs get in the Prefect UI (instead of random ones).

Flow runs: `<command>-<run id>` (`train-exp1`, `evaluate-exp1`, `rescore-exp1`). Task runs carry the
iteration, and shards their number out of how many, counted from 1: `check-worker`, `init-run`,
`prepare-rollout-it3`, `rollout-it3-shard1of4`, `finalize-rollout-it3`, `annotate-it3`,
`update-it3`, `evaluate-checkpoint4`, `score-it3`, `annotate-it3-incremental`. The templates below are
`str.format`ted by Prefect with the task's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRAIN_RUN = "train-{ctx.layout.run_id}"
EVALUATE_RUN = "evaluate-{ctx.layout.run_id}"
RESCORE_RUN = "rescore-{ctx.layout.run_id}"
EVALUATE_DEPLOYMENT_RUN = "evaluate-{run}"
RESCORE_DEPLOYMENT_RUN = "rescore-{run}"

CHECK = "check-worker"
INIT = "init-run"
PREPARE = "prepare-{stage}-it{iteration}"
FINALIZE = "finalize-{p.stage}-it{p.iteration}"
ANNOTATE = "annotate-it{iteration}"
UPDATE = "update-it{iteration}"
EVALUATE = "evaluate-checkpoint{checkpoint}"
SCORE = "score-it{iteration}"
ANNOTATE_MODE = "annotate-it{iteration}-{mode}"


def shard_name(stage: str, iteration: int, shard: int, num_shards: int) -> str:
    """`rollout-it3-shard1of4` for shard 0 of 4 (the name counts shards from 1)."""
    return f"{stage}-it{iteration}-shard{shard + 1}of{num_shards}"


def shard_run_name(parameters: dict[str, Any]) -> str:
    """The task run name of a shard task, from its parameters (`p`: the stage's `Plan`, `shard`,
    `num_shards`); Prefect calls it with them."""
    p = parameters["p"]
    return shard_name(p.stage, p.iteration, parameters["shard"], parameters["num_shards"])


def train_deployment_name(run_id: str | None, config: str) -> str:
    """`train-<run id>`; without a run id, `train-<config file stem>` (the run id is then the
    config's `name`, not known before the config is loaded: the train subflow run it starts is
    named `train-<run id>`)."""
    return f"train-{run_id or Path(config).stem}"


def train_deployment_run_name() -> str:
    """The flow run name of the train deployment, from the running flow's parameters."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return train_deployment_name(params.get("run_id"), str(params.get("config", "config")))
