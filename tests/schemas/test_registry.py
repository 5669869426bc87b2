"""The schema registry: every dataset declared, named, versioned, with the public columns."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tpgrpo.errors import DataError, UserError
from tpgrpo.schemas import SCHEMA_NAME_KEY, SCHEMA_VERSION_KEY, SCHEMAS, SchemaRef, declare, schema_for

TYPES = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "binary": pa.binary(),
    "large_binary": pa.large_binary(),
    "list<float32>": pa.list_(pa.float32()),
    "list<int32>": pa.list_(pa.int32()),
    "list<float64>": pa.list_(pa.float64()),
}
_UPDATE_METRICS = ["loss", "policy_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "grad_norm", "lr"]
_UPDATE_BY_STEP = ["grad_norm_by_step", "clip_frac_by_step", "adv_abs_by_step", "adv_nonzero_by_step"]
VERSIONS = {"updates": 2}  # v2: the per-step diagnostics (v1 still read, tests/storage/test_schema_versions)

# the public data contract (DESIGN.md, issue 4): "column:type", the names and types users query
CONTRACT: dict[str, list[str]] = {
    "prompts": ["prompt_id:string", "prompt:string", "task:string", "spec:string", "split:string"],
    "rollouts": [
        *["run_id:string", "iteration:int32", "batch:int32", "trajectory_id:int64", "prompt_id:string"],
        *["group_id:int32", "prompt:string", "seed:int64", "num_steps:int32", "window_start:int32"],
        *["window_size:int32", "sampler:string", "noise_level:float32", "guidance_scale:float32"],
        *["sigmas:list<float32>", "states:large_binary", "states_dtype:string", "states_shape:list<int32>"],
        *["ode_states:large_binary", "ode_states_dtype:string", "ode_states_shape:list<int32>"],
        *["log_probs:list<float32>", "image:binary"],
    ],
    "branches": [
        "iteration:int32",
        "trajectory_id:int64",
        "boundary:int32",
        "grid_index:int32",
        "image:binary",
        "model_evals:int32",
    ],
    "rewards": [
        "iteration:int32",
        "trajectory_id:int64",
        "boundary:int32",
        "reward_key:string",
        "score:float64",
        "strict:bool",
        "details:string",
    ],
    "annotations": [
        "iteration:int32",
        "trajectory_id:int64",
        "group_id:int32",
        "batch:int32",
        "step:int32",
        "grid_index:int32",
        "mode:string",
        "increment:float64",
        "aggregated:float64",
        "turning_point:bool",
        "kept:bool",
        "step_reward:float64",
        "advantage:float64",
    ],
    "updates": [
        *["iteration:int32", "optimizer_step:int64", "epoch:int32", "samples:int64"],
        *(f"{m}:float64" for m in _UPDATE_METRICS),
        *(f"{m}:list<float64>" for m in _UPDATE_BY_STEP),
    ],
    "eval": [
        "checkpoint:string",
        "prompt_id:string",
        "task:string",
        "seed:int64",
        "image:binary",
        "reward_key:string",
        "score:float64",
        "strict:bool",
        "details:string",
    ],
}


def test_every_dataset_is_declared() -> None:
    assert set(SCHEMAS) == set(CONTRACT)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_schema_has_contract_columns_name_and_version(name: str) -> None:
    schema = schema_for(name)
    for entry in CONTRACT[name]:
        column, type_ = entry.split(":")
        assert schema.field(column).type == TYPES[type_], column
    version = VERSIONS.get(name, 1)
    assert SchemaRef.of(schema) == SchemaRef(name, version)
    assert schema.metadata[SCHEMA_NAME_KEY] == name.encode()
    assert schema.metadata[SCHEMA_VERSION_KEY] == str(version).encode()


def test_nullable_columns_are_the_optional_ones() -> None:
    nullable = {name: {f.name for f in schema if f.nullable} for name, schema in SCHEMAS.items()}
    assert nullable["rollouts"] == {"states", "ode_states", "ode_states_dtype", "ode_states_shape"}
    assert nullable["rewards"] == {"strict", "details", "reward_model"}
    assert nullable["eval"] == {"strict", "details"}
    assert nullable["prompts"] == {"spec"}
    assert nullable["updates"] == set(_UPDATE_BY_STEP)  # null in rows read from a v1 dataset
    assert nullable["annotations"] == nullable["branches"] == set()


def test_unknown_schema_names_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown dataset schema 'rollout'.*rollouts"):
        schema_for("rollout")


def test_schema_ref_of_plain_schema_refuses() -> None:
    with pytest.raises(DataError, match="not a tpgrpo dataset"):
        SchemaRef.of(pa.schema([pa.field("x", pa.int32())]))


def test_declare_stamps_and_checks_version() -> None:
    schema = declare("thing", 3, [pa.field("x", pa.int32())])
    assert SchemaRef.of(schema) == SchemaRef("thing", 3)
    assert str(SchemaRef("thing", 3)) == "'thing' v3"
    with pytest.raises(ValueError, match="version"):
        declare("thing", 0, [])
