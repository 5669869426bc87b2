"""`prefect.yaml`: every deployment's entrypoint is a flow taking its parameters; schedules parse; no
schedule or default names a stored run that may not exist; the evaluation trigger fires for finished
training runs of the train deployment only, with their run id and root.

The integration test registers the file with `prefect deploy --all` on a real Prefect server, reads
the deployments and the trigger's automation back, then runs the chain as a worker would: a flow run
of `train`, executed with `prefect flow-run execute`, makes the server schedule a flow run of
`evaluate` for that run, which is executed in turn and writes the run's evaluations.
"""

from __future__ import annotations

import copy
import inspect
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from flows.conftest import flow_pipeline, small_config
from reliability.conftest import PrefectServer, prefect_server, use_server

# re-exported fixtures: the tiny SD3 pipeline of tests/flows, the session's Prefect server
__all__ = ["flow_pipeline", "prefect_server"]

ROOT = Path(__file__).resolve().parents[2]
GIVEN_AT_RUN_TIME = {"run"}
"""Required parameters no deployment defaults: the stored run, named when a run starts (by hand, or
by `evaluate`'s trigger), so no default can name a run that does not exist."""


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _deployment(name: str) -> dict:
    return next(d for d in _deployments() if d["name"] == name)


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
    assert required <= set(deployment["parameters"]) | GIVEN_AT_RUN_TIME
    given = {name: "some-run" for name in required - set(deployment["parameters"])}
    flow.validate_parameters({**deployment["parameters"], **given})  # types, as the server checks them


def test_no_default_names_a_stored_run() -> None:
    """Only `train` creates its run; every other deployment gets `run` when a run starts."""
    for d in _deployments():
        if d["name"] != "train":
            assert not GIVEN_AT_RUN_TIME & set(d["parameters"]), d["name"]


def test_schedules_are_valid_cron_and_only_train_has_one() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    scheduled = {d["name"]: d["schedules"] for d in _deployments() if d.get("schedules")}
    assert list(scheduled) == ["train"]  # it creates its run: a schedule cannot miss it
    for s in scheduled["train"]:
        CronSchedule(cron=s["cron"], timezone=s["timezone"])  # raises on an invalid cron string
        assert s["active"] is False  # an example: its run id and config are the user's to set


def _automation(deployment_id: uuid.UUID) -> Any:
    """The automation `prefect deploy` makes of `evaluate`'s trigger (client-side schemas)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    (spec,) = _deployment("evaluate")["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(copy.deepcopy(spec))
    trigger.set_deployment_id(deployment_id)
    return trigger.as_automation()


def _trained(run_id: str, root: str, deployment: str = "train", flow: str = "tpgrpo-train-config") -> Any:
    """The event `train_deployment` emits for a finished run, as the server receives it."""
    from prefect.server.events.schemas.events import ReceivedEvent

    from tpgrpo.flows.train import trained_event

    args = trained_event({"run_id": run_id, "root": root, "iterations": 2})
    related = [
        {
            "prefect.resource.id": f"prefect.{kind}.{uuid.uuid4()}",
            "prefect.resource.role": kind,
            "prefect.resource.name": name,
        }
        for kind, name in (("deployment", deployment), ("flow", flow))
    ]
    return ReceivedEvent(occurred=datetime.now(UTC), id=uuid.uuid4(), related=related, **args)


def test_trigger_fires_for_finished_train_runs_only() -> None:
    from prefect.server.events.schemas.automations import EventTrigger

    trigger = EventTrigger.model_validate(_automation(uuid.uuid4()).trigger.model_dump())
    assert trigger.covers(_trained("pick-1", "s3://runs/r"))
    assert not trigger.covers(_trained("pick-1", "s3://runs/r", deployment="other"))
    assert not trigger.covers(_trained("pick-1", "s3://runs/r", flow="someone-elses-flow"))


def test_trigger_passes_the_trained_run_to_evaluate() -> None:
    """The trigger's templates render as the server renders them (`RunDeployment.render_parameters`:
    a single-expression template keeps its value's type), into parameters `evaluate` accepts."""
    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from tpgrpo.flows.evaluate import evaluate_deployment

    deployment_id = uuid.uuid4()
    (action,) = _automation(deployment_id).actions
    assert action.deployment_id == deployment_id  # runs `evaluate` itself
    params = copy.deepcopy(action.parameters)
    RunDeployment._upgrade_v1_templates(params)
    context = HydrationContext(
        raise_on_error=True, render_jinja=True, jinja_context={"event": _trained("pick-1", "s3://b/runs")}
    )
    rendered = hydrate(params, context)
    assert rendered == {"run": "pick-1", "root": "s3://b/runs"}
    evaluate_deployment.validate_parameters({**_deployment("evaluate")["parameters"], **rendered})


def _prefect(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`prefect ARGS` in the checkout (entrypoints are relative to it), as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _execute(env: dict[str, str], flow_run_id: uuid.UUID) -> Any:
    """Run a scheduled flow run here, as the process worker would; returns its final flow run."""
    from prefect import get_client

    done = _prefect(env, "flow-run", "execute", str(flow_run_id))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed(), (done.stdout, done.stderr)
    return flow_run


def _triggered_run(deployment_id: uuid.UUID, timeout: float = 120) -> Any:
    """The flow run of `deployment_id` the server's automation scheduled (waits for it)."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    where = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=where)
            if runs:
                (run,) = runs
                return run
            time.sleep(1)
    pytest.fail(f"no flow run of the evaluate deployment {timeout:.0f} s after the training finished")


@pytest.mark.integration
def test_deploy_all_and_the_train_evaluate_chain(
    prefect_server: PrefectServer, flow_pipeline: Path, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    # prefect.yaml with its pull step pointed at this checkout (docs/operations.md: a worker on a
    # plain checkout); everything else as shipped
    shipped = (ROOT / "prefect.yaml").read_text()
    assert shipped.count("directory: /opt/tpgrpo") == 1
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(shipped.replace("directory: /opt/tpgrpo", f"directory: {ROOT}"))
    runs = tmp_path / "runs"
    env = {**prefect_server.env, "TPGRPO_ROOT": str(runs)}  # the worker's environment

    pool = _prefect(env, "work-pool", "create", "tpgrpo", "--type", "process")
    assert pool.returncode == 0 or "already exists" in pool.stdout, (pool.stdout, pool.stderr)
    deployed = _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    assert deployed.returncode == 0, (deployed.stdout, deployed.stderr)

    with use_server(prefect_server), get_client(sync_client=True) as client:
        registered = {d["name"]: client.read_deployment_by_name(n) for d, n in _registered_names()}
        for name, deployment in registered.items():
            spec = _deployment(name)
            assert deployment.parameters == spec["parameters"], name
            assert deployment.work_pool_name == "tpgrpo"
            assert deployment.global_concurrency_limit and deployment.global_concurrency_limit.limit == 1
        (schedule,) = registered["train"].schedules  # the inactive example; nothing else scheduled
        assert schedule.active is False and schedule.schedule.cron == "0 1 * * *"
        assert registered["rescore"].schedules == [] and registered["evaluate"].schedules == []
        assert (
            "run" not in registered["rescore"].parameters and "run" not in registered["evaluate"].parameters
        )
        (automation,) = client.read_automations_by_name("tpgrpo-evaluate-after-train")
        assert automation.enabled and automation.trigger.expect == {"tpgrpo.run.trained"}
        (action,) = automation.actions
        assert action.deployment_id == registered["evaluate"].id
        assert action.parameters == _deployment("evaluate")["triggers"][0]["parameters"]
        for name in ("rescore", "evaluate"):  # no default run: refused at once, never a failed run
            with pytest.raises(PrefectHTTPStatusError, match="'run' is a required property"):
                client.create_flow_run_from_deployment(registered[name].id)

        # the chain: a finished training run schedules its evaluation
        config = tmp_path / "chain.yaml"
        data = small_config(
            flow_pipeline,
            tmp_path / "unused",  # $TPGRPO_ROOT comes first, as on the compose stack's worker
            **{"rollout.tasks": ["single_object", "two_object"], "sampling.eval_steps": 2},
        )
        config.write_text(yaml.safe_dump(data))
        train_run = client.create_flow_run_from_deployment(
            registered["train"].id, parameters={"config": str(config), "run_id": "chain", "iterations": 1}
        )
        _execute(env, train_run.id)
        assert (runs / "chain" / "checkpoints" / "iter=0001").is_dir()
        evaluation = _triggered_run(registered["evaluate"].id)
        assert evaluation.parameters == {
            **_deployment("evaluate")["parameters"],
            "run": "chain",
            "root": str(runs),
        }
        _execute(env, evaluation.id)
    for k in (0, 1):
        assert (
            runs / "chain" / "eval" / f"iter={k:04d}" / "jpeg_incompressibility" / "_MANIFEST.json"
        ).is_file()


def _registered_names() -> list[tuple[dict, str]]:
    """(deployment, `<flow name>/<deployment name>`) of every deployment in prefect.yaml."""
    from prefect.flows import load_flow_from_entrypoint

    out = []
    for d in _deployments():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        out.append((d, f"{flow.name}/{d['name']}"))
    return out
