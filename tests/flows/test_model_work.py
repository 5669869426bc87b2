"""Model work happens in tasks on the flow's task runner, never in the orchestrating process.

On the compose stack the flow process is a CPU container and the tasks run on GPU Dask workers, so
a reward with `device: cuda` must never be built by the flow itself. Here the task runner is
threads: the flow runs in the main thread and submitted tasks in pool threads, so a reward factory
and a policy loader that refuse the main thread stand for "refuses the CPU orchestrator". The real
train, rescore and evaluate flows run on the tiny model with them. The orchestrator still refuses
an unknown reward or bad parameters up front, before any flow starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops.conftest import assert_user_error, run_cli

from tpgrpo.config import load_config_data
from tpgrpo.errors import UserError
from tpgrpo.rewards import REWARDS, Reward, make_reward

from .conftest import one_torch_thread, small_config

GUARDED = {"name": "guarded"}


def _refuse_the_orchestrator(what: str) -> None:
    if threading.current_thread() is threading.main_thread():
        raise RuntimeError(f"{what} loaded in the orchestrating thread: CUDA is not available")


def guarded(key: str = "guarded") -> Reward:
    """`jpeg_incompressibility` under another key, built only off the orchestrating thread."""
    _refuse_the_orchestrator("reward")
    reward = make_reward("jpeg_incompressibility")
    reward.key = key
    return reward


@pytest.fixture
def orchestrator_refuses_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Registers `guarded`; every policy or reward a step takes (`RunContext.policy`/`reward`, built
    or cached) refuses the main thread. Yields the threads that loaded one."""
    import tpgrpo.pipeline.context as context

    loaded: list[str] = []

    def watch(real: Any, what: str) -> Any:
        def guarded_call(*args: Any) -> Any:
            _refuse_the_orchestrator(what)
            loaded.append(threading.current_thread().name)
            return real(*args)

        return guarded_call

    monkeypatch.setitem(REWARDS, "guarded", guarded)
    monkeypatch.setattr(context, "cached_policy", watch(context.cached_policy, "policy"))
    monkeypatch.setattr(context, "cached_reward", watch(context.cached_reward, "reward"))
    yield loaded


@pytest.mark.integration
def test_train_rescore_evaluate_load_models_in_tasks_only(
    flow_pipeline: Path,
    prefect_env: dict[str, str],
    tmp_path: Path,
    orchestrator_refuses_models: list[str],
) -> None:
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.rescore import rescore
    from tpgrpo.flows.train import train
    from tpgrpo.pipeline.context import load_run

    root = tmp_path / "runs"
    cfg = load_config_data(
        small_config(
            flow_pipeline, root, **{"reward.spec": GUARDED, "rollout.tasks": ["single_object", "two_object"]}
        )
    )
    with one_torch_thread():
        assert train(cfg, run_id="g", iterations=1)["iterations"] == 1
        ctx = load_run("g", str(root))
        out = rescore(ctx, {"name": "guarded", "key": "guarded_v2"}, iters="0")
        assert out["reward_key"] == "guarded_v2" and out["skipped"] == {}
        (evaluated,) = run_evaluation(ctx, checkpoint="latest", steps=2, per_task=1)
    assert evaluated["reward_key"] == "guarded" and evaluated["rows"] == 2  # one prompt of each task
    assert (root / "g" / "iter=0000" / "rewards" / "guarded" / "_MANIFEST.json").is_file()
    assert (
        root / "g" / "iter=0000" / "annotations" / "guarded_v2" / "tp_constrained" / "_MANIFEST.json"
    ).is_file()
    assert orchestrator_refuses_models and "MainThread" not in orchestrator_refuses_models


@pytest.fixture
def stored(flow_pipeline: Path, tmp_path: Path) -> Any:
    """A stored run's context (run.json only: the refusals come before any dataset is read)."""
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.storage import write_run_record

    cfg = load_config_data(small_config(flow_pipeline, tmp_path / "runs"))
    ctx = RunContext.create(cfg, "s")
    write_run_record(ctx.layout, cfg.public_dict(), cfg.hash())
    return ctx


@pytest.fixture
def no_flow_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if any flow asks for its task runner (every flow starts that way)."""
    import tpgrpo.flows.evaluate
    import tpgrpo.flows.rescore
    import tpgrpo.flows.train

    def refuse(cfg: Any) -> None:
        raise AssertionError("a flow started before the orchestrator refused the reward")

    for module in (tpgrpo.flows.train, tpgrpo.flows.rescore, tpgrpo.flows.evaluate):
        monkeypatch.setattr(module, "task_runner_for", refuse)


BAD_SPECS = [
    ({"name": "nosuch"}, ["unknown reward 'nosuch'", "registered rewards", "'guarded'"]),
    ({"name": "guarded", "quality": 3}, ["reward 'guarded': bad parameters ['quality']", "it takes ['key']"]),
    ({"name": "pickscore", "device": "cuda"}, ["reward 'pickscore'", "'model_path'"]),
    ({"name": "jpeg", "key": "../up"}, ["invalid reward key or mode '../up'"]),
]


@pytest.mark.parametrize(("spec", "fragments"), BAD_SPECS, ids=["unknown", "parameter", "missing", "key"])
def test_the_orchestrator_refuses_a_bad_reward_up_front(
    stored: Any,
    orchestrator_refuses_models: list[str],
    no_flow_starts: None,
    spec: dict[str, Any],
    fragments: list[str],
) -> None:
    from tpgrpo.flows.evaluate import run_evaluation
    from tpgrpo.flows.rescore import rescore
    from tpgrpo.flows.train import train

    bad_cfg = stored.cfg.model_copy(update={"reward": stored.cfg.reward.model_copy(update={"spec": spec})})
    calls = [
        lambda: train(bad_cfg, run_id="new", root=stored.layout.root),
        lambda: rescore(stored, spec),
        lambda: run_evaluation(stored, reward=spec),
    ]
    for call in calls:
        with pytest.raises(UserError) as err:
            call()
        for fragment in fragments:
            assert fragment in str(err.value), (fragment, str(err.value))
    assert orchestrator_refuses_models == []  # nothing was loaded, anywhere


def test_a_reward_whose_key_is_not_its_declared_key_is_refused(
    stored: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow plans its outputs with the spec's key (`rewards.spec_key`); a factory that builds
    a reward under another key fails in the task that builds it, naming both keys."""

    def renamed() -> Reward:
        return make_reward({"name": "jpeg", "key": "elsewhere"})

    monkeypatch.setitem(REWARDS, "renamed", renamed)
    assert stored.reward_key({"name": "renamed"}) == "renamed"
    with pytest.raises(UserError, match="built with key 'elsewhere', but its spec declares 'renamed'"):
        stored.reward({"name": "renamed"})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_the_device_is_checked_where_the_tasks_run(stored: Any) -> None:
    """`model.device: cuda` on this CPU machine: refused up front when the tasks run here; on a
    Dask cluster's address the orchestrator leaves it to the workers' `check-worker` task."""
    from tpgrpo.pipeline.context import RunContext
    from tpgrpo.pipeline.start import check_worker, preflight

    def on(**flow: Any) -> RunContext:
        cfg = stored.cfg.model_copy(
            update={
                "model": stored.cfg.model.model_copy(update={"device": "cuda"}),
                "flow": stored.cfg.flow.model_copy(update=flow),
            }
        )
        return RunContext.create(cfg, "cuda-run", stored.layout.root)

    for local in (on(), on(task_runner="dask")):
        with pytest.raises(UserError, match="no usable CUDA GPU"):
            preflight(local)
    remote = on(task_runner="dask", dask_address="tcp://gpu-cluster:8786")
    preflight(remote)  # names, parameters, files: all fine
    with pytest.raises(UserError, match="no usable CUDA GPU"):
        check_worker(remote)  # what the first task finds on a worker without the GPU


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_config_validate_for_another_machine(flow_pipeline: Path, tmp_path: Path) -> None:
    """A GPU config with a PickScore reward on cuda, validated on this CPU machine: with
    --other-machine only names and parameters are checked (the reward's weights are elsewhere too)."""
    data = small_config(flow_pipeline, tmp_path / "runs", **{"model.device": "cuda"})
    data["reward"]["spec"] = {"name": "pickscore", "model_path": "/models/PickScore_v1", "device": "cuda"}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    ok = run_cli("config", "validate", str(path), "--other-machine")
    assert ok.exit_code == 0, ok.output
    assert f"{path}: valid" in ok.stdout
    here = run_cli("config", "validate", str(path))
    assert_user_error(
        here, "2 problem(s)", "model.device 'cuda'", "reward.spec: pickscore reward", "--other-machine"
    )
    data["reward"]["spec"] = {"name": "pickscore", "device": "cuda", "dtpye": "bfloat16"}
    path.write_text(yaml.safe_dump(data))
    bad = run_cli("config", "validate", str(path), "--other-machine")
    assert_user_error(bad, "reward 'pickscore': bad parameters ['device', 'dtpye']", "it takes")
