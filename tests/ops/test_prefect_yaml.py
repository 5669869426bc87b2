"""`prefect.yaml`: every deployment's entrypoint is a flow taking exactly its parameters; schedules parse."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_deployments_cover_train_rescore_evaluate() -> None:
    names = {d["entrypoint"].rsplit(":", 1)[1] for d in _deployments()}
    assert names == {"train_deployment", "rescore_deployment", "evaluate_deployment"}
    for d in _deployments():
        assert d["work_pool"]["name"] == "tpgrpo" and d["concurrency_limit"] == 1


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["name"])
def test_entrypoint_is_a_flow_taking_the_parameters(deployment: dict) -> None:
    from prefect.flows import Flow, load_flow_from_entrypoint

    path, _, _ = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file()
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert isinstance(flow, Flow)
    accepted = inspect.signature(flow.fn).parameters
    assert set(deployment["parameters"]) <= set(accepted), set(deployment["parameters"]) - set(accepted)
    required = {n for n, p in accepted.items() if p.default is inspect.Parameter.empty}
    assert required <= set(deployment["parameters"])
    flow.validate_parameters(deployment["parameters"])  # types, as the server checks them


def test_schedules_are_valid_cron() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    schedules = [s for d in _deployments() for s in d.get("schedules") or []]
    assert schedules and any(s["active"] for s in schedules)
    for s in schedules:
        CronSchedule(cron=s["cron"], timezone=s["timezone"])  # raises on an invalid cron string
