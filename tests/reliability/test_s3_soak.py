"""Soak (slow): the whole train flow on S3 through a faulty network, then equal to the clean run.

Two iterations of the small config with the runs root on the moto server behind `FaultProxy`:
every 7th request answered 503, every 11th connection dropped, every 13th answer delayed 0.5 s.
The client's retries (and the tasks' `retry_on_io` beyond them) absorb it all: the run finishes,
`audit verify` passes, and every row and tensor equals the reference run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flows.conftest import small_config

from tpgrpo.storage import RunLayout

from .conftest import PrefectServer, run_content, use_server
from .faults import Fault, FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.integration]


def test_train_flow_through_a_faulty_network(
    reference_run: RunLayout,
    flow_pipeline: Path,
    prefect_server: PrefectServer,
    s3_bucket: Any,
    proxy: FaultProxy,
) -> None:
    from tpgrpo.config import load_config_data
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.report.verify import verify_run

    data = small_config(flow_pipeline, Path("."))
    data["storage"] = {
        "root": s3_bucket.root,
        "s3": {"endpoint_url": proxy.url, "key": s3_bucket.storage_options["key"], "secret": "testing"},
    }
    cfg = load_config_data(data)
    proxy.add(
        Fault("status", every=7, status=503),
        Fault("drop", every=11),
        Fault("delay", every=13, seconds=0.5),
    )
    with use_server(prefect_server):
        train(cfg, run_id=reference_run.run_id)
    assert proxy.injected() > 20, proxy.injected()
    proxy.clear()
    ctx = RunContext.create(cfg, reference_run.run_id)
    report = verify_run(ctx)
    assert report.ok, report.faults
    layout = RunLayout(s3_bucket.root, reference_run.run_id, ctx.storage_options)
    assert run_content(layout) == run_content(reference_run)
