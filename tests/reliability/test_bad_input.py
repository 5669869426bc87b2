"""Bad input to `tpgrpo train`: one clear error each, exit code 2, no traceback, nothing written.

Every case goes through the real entry point (`tpgrpo.cli.app.main`, in this process through
`CliRunner`); the runs root must not exist afterwards (or, for an existing run, be unchanged):
no `run.lock`, no `run.json`, no half-made run directory. One case also runs as a real process,
whose whole stderr must be the one message.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from flows.conftest import small_config
from ops.conftest import assert_user_error, run_cli

from .conftest import tree


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _with(data: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for key, value in changes.items():
        node = out
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return out


@pytest.fixture
def base(flow_pipeline: Path, tmp_path: Path) -> dict[str, Any]:
    return small_config(flow_pipeline, tmp_path / "runs")


def _train(tmp_path: Path, config: dict[str, Any] | bytes, *extra: str) -> Any:
    path = tmp_path / "bad.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(yaml.safe_dump(config))
    return run_cli("train", str(path), "--run-id", "bad", *extra)


def _raw(data: dict[str, Any], extra: bytes) -> bytes:
    """The YAML of `data` with `extra` lines replacing its keys of the same names."""
    keys = {line.split(b":")[0].strip() for line in extra.splitlines() if line and not line.startswith(b" ")}
    kept = {k: v for k, v in data.items() if k.encode() not in keys}
    if extra.startswith((b"model: [", b"- ")) or b"\xe9" in extra:  # whole-file garbage
        return extra
    return yaml.safe_dump(kept).encode() + extra


def _prompt_file(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


CASES: list[tuple[str, Any, list[str]]] = [
    ("malformed YAML", b"model: [1, 2\nupdate: }\n", ["invalid YAML"]),
    ("not a mapping", b"- 1\n- 2\n", ["must be a mapping of sections"]),
    ("non-UTF-8 config", b"name: caf\xe9\n", ["not UTF-8"]),
    ("unknown key", {"update.lrr": 1e-3}, ["update.lrr: unknown key"]),
    ("unknown section", {"trainer": {"lr": 1}}, ["trainer: unknown key"]),
    ("wrong type", {"update.lr": "fast"}, ["update.lr", "valid number"]),
    ("section of the wrong type", {"update": [1, 2]}, ["update"]),
    ("non-finite number", {"sampling.guidance_scale": float("inf")}, ["not a finite number"]),
    ("a YAML date for an int", b"seed: 2024-01-01\n", ["seed"]),
    ("binary YAML", b"name: !!binary aGVsbG8=\n", ["a bytes is not a config value"]),
    ("a set", b"name: !!set {a, b}\n", ["a set is not a config value"]),
    ("non-string key", b"update:\n  1: 2\n", ["key 1 is not a string"]),
    (
        "optimizer steps vs trajectories",
        {"update.optimizer_steps": 5},
        ["optimizer_steps=5 does not divide the 12 trajectories"],
    ),
    ("group size below 2", {"rollout.group_size": 1}, ["rollout.group_size"]),
    ("more shards than groups", {"rollout.shards": 9}, ["rollout.shards=9 exceeds the 4 prompt groups"]),
    ("window past the grid", {"sampling.window_size": 9}, ["window"]),
    ("unknown reward", {"reward.spec": "nosuch"}, ["unknown reward 'nosuch'", "registered rewards"]),
    ("unknown reward parameter", {"reward.spec": {"name": "jpeg", "bogus": 1}}, ["bad parameters ['bogus']"]),
    ("reward spec without a name", {"reward.spec": {"quality": 3}}, ["needs a string 'name'"]),
    ("unknown mode", {"reward.mode": "bogus"}, ["reward.mode", "tp_constrained"]),
    ("unknown family", {"model.family": "sdxl"}, ["model.family"]),
    (
        "reward key traversing paths",
        {"reward.spec": {"name": "jpeg", "key": "../../etc"}},
        ["invalid reward key or mode '../../etc'"],
    ),
    # DanceGRPO's options (issue 19)
    ("unknown sampler", {"sampling.sampler": "euler"}, ["sampling.sampler", "'dance'"]),
    ("timestep fraction 0", {"update.timestep_fraction": 0}, ["update.timestep_fraction", "greater than 0"]),
    (
        "timestep fraction over 1",
        {"update.timestep_fraction": 1.5},
        ["update.timestep_fraction", "less than"],
    ),
    (
        "timestep fraction training no step",
        {"update.timestep_fraction": 0.2},
        ["update.timestep_fraction=0.2 trains floor(", "= 0 of the window's", "use a fraction ≥"],
    ),
    ("odd best-of-n", {"advantage.best_of_n": 3}, ["advantage.best_of_n=3 must be even"]),
    (
        "best-of-n over G",
        {"advantage.best_of_n": 4},
        ["advantage.best_of_n=4", "at most rollout.group_size=3"],
    ),
    (
        "best-of-n without skip_zero",
        {"advantage.best_of_n": 2, "advantage.skip_zero": False},
        ["advantage.best_of_n leaves out trajectories", "skip_zero=true"],
    ),
    ("zero reward weights", {"advantage.weights": {"jpeg": 0}}, ["advantage.weights are all 0"]),
    (
        "unknown aggregation",
        {"advantage.aggregate": "sum"},
        ["advantage.aggregate", "'reward' or 'advantage'"],
    ),
    # values that once passed validation and failed later, after files were written
    ("learning rate overflowing to infinity", b"update:\n  lr: 1e400\n", ["update.lr"]),
    ("learning rate as a string of nan", {"update.lr": "nan"}, ["update.lr"]),
    ("learning rate a boolean", {"update.lr": True}, ["update.lr", "a boolean is not a number"]),
    ("LoRA rank a boolean", {"update.lora_rank": True}, ["update.lora_rank", "a boolean is not a number"]),
    ("switch given as a number", {"reward.balance": 1}, ["reward.balance", "valid boolean"]),
    ("implausible learning rate", {"update.lr": 5.0}, ["update.lr", "less than or equal to 1"]),
    ("huge group size", {"rollout.group_size": 10**9}, ["rollout.group_size"]),
    (
        "huge iteration",
        {"rollout.group_size": 1000, "rollout.prompts_per_batch": 1000},
        ["trajectories per iteration", "lower one of them"],
    ),
    ("negative seed", {"seed": -1}, ["seed", "greater than or equal to 0"]),
    ("nonsense device", {"model.device": "tpu9"}, ["model.device", "tpu9"]),
    ("empty model path", {"model.path": ""}, ["model.path", "at least 1 character"]),
    ("empty prompt set", {"rollout.prompts": ""}, ["rollout.prompts"]),
    ("empty storage root", {"storage.root": ""}, ["storage.root"]),
    ("negative retries", {"flow.io_retries": -1}, ["flow.io_retries"]),
    ("S3 endpoint without a scheme", {"storage.s3.endpoint_url": "minio:9000"}, ["storage.s3.endpoint_url"]),
    ("huge image", {"model.height": 65536, "model.width": 65536}, ["model.height", "model.width"]),
    pytest.param(
        "cuda without a GPU",
        {"model.device": "cuda"},
        ["model.device 'cuda'", "no usable CUDA GPU", "set it to cpu"],
        marks=pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU"),
    ),
]


def _id(case: Any) -> str:
    return str(case.values[0] if hasattr(case, "values") else case[0])


@pytest.mark.parametrize(("name", "change", "fragments"), CASES, ids=[_id(c) for c in CASES])
def test_bad_config(
    base: dict[str, Any], tmp_path: Path, name: str, change: Any, fragments: list[str]
) -> None:
    if isinstance(change, bytes):  # raw YAML, after the small config's own keys
        result = _train(tmp_path, _raw(base, change))
    else:
        result = _train(tmp_path, _with(base, **change))
    assert_user_error(result, *fragments)
    assert result.stderr.count("error:") == 1
    assert tree(tmp_path / "runs") == []


@pytest.mark.parametrize(("name", "change", "fragments"), CASES, ids=[_id(c) for c in CASES])
def test_config_validate_refuses_what_train_refuses(
    base: dict[str, Any], tmp_path: Path, name: str, change: Any, fragments: list[str]
) -> None:
    """`tpgrpo config validate` finds every problem `train` finds before writing anything."""
    path = tmp_path / "bad.yaml"
    if isinstance(change, bytes):
        path.write_bytes(_raw(base, change))
    else:
        path.write_text(yaml.safe_dump(_with(base, **change)))
    assert_user_error(run_cli("config", "validate", str(path)), *fragments)


@pytest.mark.parametrize(
    "content", [b"", b"# nothing but a comment\n", b"---\n"], ids=["empty", "comment", "document"]
)
def test_empty_config_file_is_refused(base: dict[str, Any], tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.yaml"
    path.write_bytes(content)
    root = str(tmp_path / "runs")
    for command in (["train", str(path), "--run-id", "x", "--root", root], ["config", "validate", str(path)]):
        assert_user_error(run_cli(*command), "is empty", "configs/tiny.yaml")
    assert tree(tmp_path / "runs") == []


def test_override_overflowing_to_infinity(base: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base))
    result = run_cli("train", str(path), "--run-id", "x", "--set", "update.lr=1e400", "--set", "seed=-1")
    assert_user_error(result, "update.lr", "seed")
    assert tree(tmp_path / "runs") == []


def test_empty_root_is_refused(base: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base))
    for command in (["train", str(path), "--run-id", "x"], ["runs", "list"], ["runs", "show", "x"]):
        assert_user_error(run_cli(*command, "--root", ""), "--root is empty")
    assert tree(tmp_path / "runs") == []


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["no prompts in the file"]),
        (b"# only a comment\n\n   \n", ["no prompts in the file"]),
        (b"three red circles\na blue \xff\xfe square\n", ["not UTF-8", "offset 25"]),
        (b"\x00\x01 binary junk\n", ["control characters"]),
        (b"x" * 3000 + b"\n", ["longer than 2000"]),
    ],
    ids=["empty", "comments only", "non-UTF-8", "control characters", "too long"],
)
def test_bad_prompt_file(base: dict[str, Any], tmp_path: Path, content: bytes, fragments: list[str]) -> None:
    prompts = _prompt_file(tmp_path, "prompts.txt", content)
    result = _train(tmp_path, _with(base, **{"rollout.prompts": prompts}))
    assert_user_error(result, prompts, *fragments)
    assert tree(tmp_path / "runs") == []


@pytest.mark.parametrize(
    ("lines", "fragments"),
    [
        (['{"prompt": "a"', '{"prompt": 3}'], [":1: invalid JSON", ":2: each line must be an object"]),
        (['{"prompt": "a", "prompt_id": "x"}', '{"prompt": "b", "prompt_id": "x"}'], ["duplicate prompt_id"]),
        (['{"prompt": "a \\ud800 b"}'], ["lone surrogate"]),
    ],
    ids=["malformed lines", "duplicate ids", "lone surrogate"],
)
def test_bad_jsonl_prompts(
    base: dict[str, Any], tmp_path: Path, lines: list[str], fragments: list[str]
) -> None:
    prompts = _prompt_file(tmp_path, "prompts.jsonl", "\n".join(lines).encode())
    result = _train(tmp_path, _with(base, **{"rollout.prompts": prompts}))
    assert_user_error(result, *fragments)
    assert tree(tmp_path / "runs") == []


def test_missing_prompt_file(base: dict[str, Any], tmp_path: Path) -> None:
    result = _train(tmp_path, _with(base, **{"rollout.prompts": str(tmp_path / "nope.txt")}))
    assert_user_error(result, "nope.txt", "not found")
    assert tree(tmp_path / "runs") == []


def test_missing_model_directory(base: dict[str, Any], tmp_path: Path) -> None:
    result = _train(tmp_path, _with(base, **{"model.path": str(tmp_path / "no-model")}))
    assert_user_error(result, "no-model", "does not exist")
    assert tree(tmp_path / "runs") == []


def test_directory_without_model_index(base: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    result = _train(tmp_path, _with(base, **{"model.path": str(tmp_path / "empty-model")}))
    assert_user_error(result, "no model_index.json")
    assert tree(tmp_path / "runs") == []


def test_checkpoint_of_another_family(base: dict[str, Any], tmp_path: Path) -> None:
    result = _train(tmp_path, _with(base, **{"model.family": "flux"}))
    assert_user_error(result, "holds a StableDiffusion3Pipeline, not a flux pipeline", "model.family")
    assert tree(tmp_path / "runs") == []


def test_pickle_weights_are_refused(base: dict[str, Any], flow_pipeline: Path, tmp_path: Path) -> None:
    """A pipeline whose transformer has only a pickle (`.bin`) is refused before anything loads."""
    model = tmp_path / "pickled"
    shutil.copytree(flow_pipeline, model)
    for f in (model / "transformer").glob("*.safetensors"):
        f.unlink()
    (model / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not even a pickle")
    result = _train(tmp_path, _with(base, **{"model.path": str(model)}))
    assert_user_error(result, "pickle weights only", "safetensors")
    assert tree(tmp_path / "runs") == []


@pytest.mark.parametrize("run_id", ["", "../evil", "a/b", "/abs", "..", ".hidden", "x" * 200, "sp ace", "é"])
def test_run_id_is_validated(base: dict[str, Any], tmp_path: Path, run_id: str) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base))
    result = run_cli("train", str(path), "--run-id", run_id)
    assert_user_error(result, "invalid run id")
    assert tree(tmp_path / "runs") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]


def test_bad_override(base: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(base))
    result = run_cli("train", str(path), "--run-id", "x", "--set", "update.lr", "--set", "seed=[1")
    assert_user_error(result, "expected KEY=VALUE", "not valid YAML")
    assert tree(tmp_path / "runs") == []


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("train", str(tmp_path / "nope.yaml"), "--run-id", "x", "--root", str(tmp_path / "runs"))
    assert_user_error(result, "nope.yaml", "not found")
    assert tree(tmp_path / "runs") == []


def test_existing_run_with_another_config(base: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "bad", "config_hash": "0" * 64, "config": {}}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = _train(tmp_path, base)
    assert_user_error(result, "already exists with a different config", "another --run-id")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_stage_of_an_unknown_run_and_stage(tmp_path: Path) -> None:
    root = str(tmp_path / "runs")
    assert_user_error(
        run_cli("stage", "score", "--run", "gone", "--iter", "0", "--root", root), "unknown run"
    )
    assert_user_error(
        run_cli("stage", "paint", "--run", "gone", "--iter", "0", "--root", root), "unknown stage"
    )
    assert_user_error(
        run_cli("stage", "score", "--run", "../x", "--iter", "0", "--root", root), "invalid run id"
    )
    assert tree(tmp_path / "runs") == []


def test_bad_input_as_a_real_process(base: dict[str, Any], tmp_path: Path) -> None:
    """The whole stderr of a real `tpgrpo train` process is the one message."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with(base, **{"model.path": str(tmp_path / "no-model")})))
    proc = subprocess.run(
        [sys.executable, "-m", "tpgrpo.cli.app", "train", str(path), "--run-id", "bad"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: model directory '{tmp_path / 'no-model'}' does not exist; set model.path to a diffusers "
        "pipeline directory (the one holding model_index.json)"
    ]
    assert proc.stdout == ""
    assert tree(tmp_path / "runs") == []
