"""The task runner a flow maps its shards over: local threads, or a Dask cluster.

`flow.task_runner: threads` (default) runs shards in this process with `flow.workers` threads;
`dask` sends them to the Dask scheduler at `flow.dask_address`, or to a local cluster of
`flow.workers` single-threaded worker processes when no address is given (what the tests use).
"""

from __future__ import annotations

from typing import Any

from tpgrpo.config import Config
from tpgrpo.errors import UserError


def task_runner_for(cfg: Config) -> Any:
    """The Prefect task runner of `cfg.flow`."""
    if cfg.flow.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.flow.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise UserError("flow.task_runner 'dask' needs prefect-dask: pip install 'tpgrpo[dask]'") from err
    if cfg.flow.dask_address:
        return DaskTaskRunner(address=cfg.flow.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": cfg.flow.workers, "threads_per_worker": 1, "processes": True},
    )
